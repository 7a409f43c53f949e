from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from tenants.choices import TenantRole

slug_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$",
    "Use 1-40 lowercase letters, digits and inner hyphens.",
)


class TenantQuerySet(models.QuerySet):
    def visible_to(self, user) -> "TenantQuerySet":
        """The one rule for which tenants a user can see: platform admins see all, others
        only those they are a member of."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self.all()
        return self.filter(memberships__user=user).distinct()


class Tenant(models.Model):
    slug = models.CharField(max_length=40, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class TenantScopedQuerySet(models.QuerySet):
    """Base for every model owned by a tenant: the only way views reach such rows."""

    def for_tenant(self, tenant: Tenant):
        return self.filter(tenant=tenant)


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=TenantRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "user__username"]
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} as {self.role}"
