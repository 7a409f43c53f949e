import uuid

from django.db import models

from portal.choices import DeploymentKind, DeploymentStatus
from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet


class Deployment(models.Model):
    """Drives one app from its previous target to a new one, in Marathon's steps."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="deployments")
    app = models.ForeignKey("App", on_delete=models.SET_NULL, null=True, related_name="deployments")
    app_marathon_id = models.CharField(max_length=255)
    version = models.CharField(max_length=32)
    kind = models.CharField(max_length=8, choices=DeploymentKind.choices)
    target_version = models.ForeignKey("AppVersion", on_delete=models.SET_NULL, null=True, related_name="+")
    previous_version = models.ForeignKey("AppVersion", on_delete=models.SET_NULL, null=True, related_name="+")
    steps = models.JSONField(default=list)  # [{"actions": [{"action": ..., "app": ...}]}]
    current_step = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=12, choices=DeploymentStatus.choices, default=DeploymentStatus.RUNNING)
    progress = models.JSONField(default=dict)  # {"target": n, "new_healthy": k, "old_left": m, ...}
    failure_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"deployment {self.id} of {self.app_marathon_id}"
