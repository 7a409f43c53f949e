from django.conf import settings
from django.db import models

from tenants.choices import AuditAction
from tenants.models.tenant import Tenant, TenantScopedQuerySet


class AuditEntry(models.Model):
    """Who did what to which tenant's settings. Never holds a secret."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, related_name="audit_entries")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    target = models.CharField(max_length=128)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.action} {self.target}"
