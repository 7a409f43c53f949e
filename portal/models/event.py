from django.db import models

from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet


class Event(models.Model):
    """The per-tenant event log: the record. Channels groups get a copy after commit."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="events")
    app = models.ForeignKey("App", on_delete=models.SET_NULL, null=True, related_name="events")
    instance = models.ForeignKey("Instance", on_delete=models.SET_NULL, null=True, related_name="events")
    kind = models.CharField(max_length=48)  # Marathon eventType, e.g. status_update_event
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"
