import uuid

from django.db import models

from tenants.models import Tenant
from tenants.models.tenant import TenantScopedQuerySet


class Network(models.Model):
    """A tenant network: one isolated L2 segment (vmworker.network) with its own IPv4 subnet,
    unique among the tenant's networks (tenants are isolated from each other, so two tenants
    may use the same subnet). Made on first use: the default one at a tenant's first deploy,
    a named one when an app asks for it (``networks: [{"mode": "container", "name": ...}]``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="networks")
    name = models.CharField(max_length=63)
    subnet = models.CharField(max_length=43)  # CIDR, e.g. 10.1.0.0/24
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="network_unique_name"),
            models.UniqueConstraint(fields=["tenant", "subnet"], name="network_unique_subnet"),
        ]

    def __str__(self) -> str:
        return f"network {self.name} ({self.subnet}) of tenant {self.tenant_id}"


class NetworkAllocation(models.Model):
    """One address of a network held by one instance (the portal's IPAM). Written under the
    network row's lock at placement, deleted when the instance ends; the unique constraint is
    the last line of defence against a duplicate address."""

    # RESTRICT: a network in use cannot go alone, but with its tenant (whose instances go too) it can.
    network = models.ForeignKey(Network, on_delete=models.RESTRICT, related_name="allocations")
    instance = models.OneToOneField("Instance", on_delete=models.CASCADE, related_name="network_allocation")
    address = models.GenericIPAddressField(protocol="IPv4")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["network", "address"], name="allocation_unique_address"),
        ]

    def __str__(self) -> str:
        return f"{self.address} of {self.network_id} for instance {self.instance_id}"
