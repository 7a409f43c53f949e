from django.conf import settings
from django.db import models

from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet


class App(models.Model):
    """A tenant's app, named by its Marathon id (``/shop/web``). Its definition lives in
    immutable versions; ``current_version`` is the one the platform drives toward."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="apps")
    marathon_id = models.CharField(max_length=255)
    current_version = models.ForeignKey("AppVersion", on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    deleting = models.BooleanField(default=False)
    last_scaling_at = models.DateTimeField(null=True)
    last_config_change_at = models.DateTimeField(null=True)
    # Marathon's launch backoff: consecutive failed launches and when the next may start.
    launch_failures = models.PositiveIntegerField(default=0)
    next_launch_at = models.DateTimeField(null=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["marathon_id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "marathon_id"], name="app_unique_id")]

    def __str__(self) -> str:
        return self.marathon_id


class AppVersion(models.Model):
    """One stored definition. Never edited: a change writes a new version."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=32)  # Marathon timestamp, e.g. 2026-11-25T21:00:00.123Z
    definition = models.JSONField()  # normalised by portal.marathon
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["app", "version"], name="appversion_unique")]

    def __str__(self) -> str:
        return f"{self.app_id}@{self.version}"
