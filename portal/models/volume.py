import uuid

from django.db import models

from portal.choices import VolumeState
from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet
from vmworker.storage import VOLUME_NAME_PREFIX


class Volume(models.Model):
    """One local persistent volume (Marathon's ``container.volumes[].persistent``) of one
    instance slot of an app: a libvirt storage volume on its host's pool (vmworker.storage).

    An app with persistent volumes is resident: slot ``slot`` holds one volume per
    ``container_path``; the instance that holds the slot runs on the slot's ``host`` and every
    relaunch of it (restart, upgrade, scale back up) takes the same slot again. The row lives
    until its host has deleted the volume: it outlives its app (``app`` set null, the Marathon id
    kept) so a deleted app's volumes are still destroyed and their quota claim released."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="volumes")
    app = models.ForeignKey("App", on_delete=models.SET_NULL, null=True, related_name="volumes")
    app_marathon_id = models.CharField(max_length=255)
    slot = models.PositiveIntegerField()
    container_path = models.CharField(max_length=255)
    size_mib = models.PositiveIntegerField()
    # The instance holding the slot now, or the last one that did (the slot is free when it ended).
    instance = models.ForeignKey("Instance", on_delete=models.SET_NULL, null=True, related_name="volumes")
    host = models.ForeignKey("ComputeHost", on_delete=models.PROTECT, null=True, related_name="volumes")
    state = models.CharField(max_length=12, choices=VolumeState.choices, default=VolumeState.RESERVED)
    pool_name = models.CharField(max_length=128, blank=True)
    used_bytes = models.BigIntegerField(null=True)  # blocks the volume file holds, as its host last saw
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["app_marathon_id", "slot", "container_path"]
        constraints = [
            models.UniqueConstraint(
                fields=["app", "slot", "container_path"],
                condition=models.Q(app__isnull=False),
                name="volume_unique_slot_path",
            )
        ]

    def __str__(self) -> str:
        return f"volume {self.id} ({self.container_path}, slot {self.slot}) of {self.app_marathon_id}"

    @property
    def volume_name(self) -> str:
        """The storage volume's name in its pool (and its file name in a dir pool)."""
        return f"{VOLUME_NAME_PREFIX}{self.id}"

    @property
    def persistence_id(self) -> str:
        """Marathon's ``localVolumes[].persistenceId``: app path with '#', the path, the id."""
        return f"{self.app_marathon_id.strip('/').replace('/', '_')}#{self.container_path}#{self.id}"
