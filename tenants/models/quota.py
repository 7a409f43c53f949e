from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from tenants.choices import QuotaResource
from tenants.models.tenant import Tenant, TenantScopedQuerySet

# Upper bounds keep absurd values out (and inside PostgreSQL's integer range).
QUOTA_MAXIMUM = {
    QuotaResource.VCPUS: 4096,
    QuotaResource.MEMORY_MIB: 16 * 1024 * 1024,
    QuotaResource.DISK_MIB: 1024 * 1024 * 1024,
    QuotaResource.INSTANCES: 10000,
    QuotaResource.VOLUMES: 10000,
    QuotaResource.NETWORKS: 1000,
    QuotaResource.PUBLISHED_PORTS: 10000,
}
QUOTA_DEFAULT = {
    QuotaResource.VCPUS: 8,
    QuotaResource.MEMORY_MIB: 8192,
    QuotaResource.DISK_MIB: 20480,
    QuotaResource.INSTANCES: 20,
    QuotaResource.VOLUMES: 10,
    QuotaResource.NETWORKS: 4,
    QuotaResource.PUBLISHED_PORTS: 10,
}


def _limit_field(resource: QuotaResource) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        default=QUOTA_DEFAULT[resource],
        validators=[MinValueValidator(0), MaxValueValidator(QUOTA_MAXIMUM[resource])],
        verbose_name=resource.label,
    )


class Quota(models.Model):
    """Limits of one tenant. Its row is also the lock every reservation takes, so
    concurrent reservations of one tenant serialise on it."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota")
    vcpus = _limit_field(QuotaResource.VCPUS)
    memory_mib = _limit_field(QuotaResource.MEMORY_MIB)
    disk_mib = _limit_field(QuotaResource.DISK_MIB)
    instances = _limit_field(QuotaResource.INSTANCES)
    volumes = _limit_field(QuotaResource.VOLUMES)
    networks = _limit_field(QuotaResource.NETWORKS)
    published_ports = _limit_field(QuotaResource.PUBLISHED_PORTS)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"quota of {self.tenant}"

    def limits(self) -> dict[str, int]:
        return {resource.value: getattr(self, resource.value) for resource in QuotaResource}


class ResourceClaim(models.Model):
    """What one live thing (an instance, a volume, a network...) holds of its tenant's quota.
    Usage is the sum of the live claims; the claim is written in the same transaction as
    the thing it belongs to and deleted with it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="claims")
    owner_kind = models.CharField(max_length=32)
    owner_id = models.CharField(max_length=64)
    vcpus = models.PositiveIntegerField(default=0)
    memory_mib = models.PositiveIntegerField(default=0)
    disk_mib = models.PositiveIntegerField(default=0)
    instances = models.PositiveIntegerField(default=0)
    volumes = models.PositiveIntegerField(default=0)
    networks = models.PositiveIntegerField(default=0)
    published_ports = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "owner_kind", "owner_id"], name="claim_unique_owner")]

    def __str__(self) -> str:
        return f"{self.owner_kind} {self.owner_id} of tenant {self.tenant_id}"
