import uuid

from django.db import models

from portal.choices import InstanceStatus
from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet


class Instance(models.Model):
    """One HyperVM running one version of an app on one host. ``status`` moves only along
    portal.choices.INSTANCE_TRANSITIONS, by compare-and-swap (portal.services.instances)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="instances")
    app = models.ForeignKey("App", on_delete=models.CASCADE, related_name="instances")
    version = models.ForeignKey("AppVersion", on_delete=models.CASCADE, related_name="instances")
    deployment = models.ForeignKey("Deployment", on_delete=models.SET_NULL, null=True, related_name="instances")
    host = models.ForeignKey("ComputeHost", on_delete=models.PROTECT, null=True, related_name="instances")
    status = models.CharField(max_length=12, choices=InstanceStatus.choices, default=InstanceStatus.STAGED)
    vcpus = models.PositiveIntegerField()
    memory_mib = models.PositiveIntegerField()
    host_ports = models.JSONField(default=list)  # one per port mapping, in order
    ip_address = models.CharField(max_length=45, blank=True)
    # The manifest digest it runs ("sha256:..."), set when its host prepared the image: the
    # tenant's image claim (portal.services.images) is held while a live instance names it.
    image_digest = models.CharField(max_length=71, blank=True)
    exit_code = models.IntegerField(null=True)
    oom_killed = models.BooleanField(default=False)
    failure_reason = models.CharField(max_length=1000, blank=True)
    console_tail = models.TextField(blank=True)
    phase_times = models.JSONField(default=dict)  # status -> ISO timestamp when it was entered
    timings_s = models.JSONField(default=dict)  # pull, unpack, fs_image, initramfs, define, boot, exec
    health = models.JSONField(default=dict)  # alive, consecutiveFailures, firstSuccess, lastSuccess...
    restart_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, related_name="+")
    # A host task that met a transient failure: the attempt that failed and when the next one
    # starts (portal.services.instances.instance_retry_note); failure_reason says why meanwhile.
    launch_attempt = models.PositiveIntegerField(default=0)
    not_before = models.DateTimeField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["host", "status"])]

    def __str__(self) -> str:
        return f"instance {self.id} ({self.status})"

    @property
    def task_id(self) -> str:
        """Marathon task id: app path with dots, then the instance uuid."""
        return f"{self.app.marathon_id.strip('/').replace('/', '_')}.instance-{self.id}"

    @property
    def start_kind(self) -> str | None:
        """``warm``: started in a pooled blank VM (vmworker.warm_pool; its timings have ``claim``);
        ``cold``: a VM booted for it; None: not started yet."""
        timings = self.timings_s or {}
        if "boot_to_exec" not in timings:
            return None
        return "warm" if "claim" in timings else "cold"
