from dataclasses import dataclass

from django.db.models import Sum

from tenants.choices import QuotaResource
from tenants.embedded_registry import EmbeddedRegistry, embedded_registry
from tenants.models import ApiToken, ImageRegistry, Membership, Quota, ResourceClaim, Tenant


@dataclass(frozen=True)
class QuotaLine:
    resource: str
    label: str
    limit: int
    used: int

    @property
    def percent(self) -> int:
        if self.limit == 0:
            return 100 if self.used else 0
        return min(100, round(100 * self.used / self.limit))

    @property
    def over(self) -> bool:
        return self.used > self.limit


def quota_usage(*, tenant: Tenant) -> dict[str, int]:
    totals = ResourceClaim.objects.for_tenant(tenant).aggregate(
        **{resource.value: Sum(resource.value) for resource in QuotaResource}
    )
    return {resource: value or 0 for resource, value in totals.items()}


# What holds disk, by claim owner kind (written by the portal's services: an instance's writable
# layer, an image in use, a persistent volume).
DISK_HOLDERS = (("volume", "persistent volumes"), ("instance", "writable layers"), ("image", "images"))


def quota_disk_breakdown(*, tenant: Tenant) -> list[tuple[str, int]]:
    """(label, MiB) of the tenant's disk_mib usage per kind of holder, largest first, zeros left out."""
    totals = dict(
        ResourceClaim.objects.for_tenant(tenant)
        .values("owner_kind")
        .annotate(disk=Sum("disk_mib"))
        .values_list("owner_kind", "disk")
    )
    parts = [(label, totals.get(kind) or 0) for kind, label in DISK_HOLDERS]
    return sorted((part for part in parts if part[1]), key=lambda part: -part[1])


def quota_report(*, tenant: Tenant) -> list[QuotaLine]:
    quota = Quota.objects.get(tenant=tenant)
    usage = quota_usage(tenant=tenant)
    return [
        QuotaLine(resource=r.value, label=r.label, limit=getattr(quota, r.value), used=usage[r.value])
        for r in QuotaResource
    ]


def tenant_list(*, user):
    return Tenant.objects.visible_to(user)


def membership_list(*, tenant: Tenant):
    return Membership.objects.for_tenant(tenant).select_related("user")


def registry_list(*, tenant: Tenant):
    return ImageRegistry.objects.for_tenant(tenant)


def registry_list_for_deploy(*, tenant: Tenant) -> list[ImageRegistry | EmbeddedRegistry]:
    """What the Deploy form offers: the tenant's registries, then the platform's embedded one
    unless the tenant has its own registry for that host (which is what a pull would use)."""
    registries: list[ImageRegistry | EmbeddedRegistry] = list(registry_list(tenant=tenant))
    embedded = embedded_registry()
    if embedded is not None and all(r.host != embedded.host for r in registries):
        registries.append(embedded)
    return registries


def registry_for_image(*, tenant: Tenant, image: str) -> ImageRegistry | EmbeddedRegistry | None:
    """The tenant's registry whose host[:port] is the image reference's registry part, else the
    platform's embedded registry when the image is on it (read-only pulls for every tenant)."""
    first, sep, _ = image.partition("/")
    if not sep:
        return None
    return next((r for r in registry_list_for_deploy(tenant=tenant) if r.host == first), None)


def api_token_list(*, user, seen_by: ApiToken | None = None):
    """The user's tokens; a request made with a pinned token sees (and so revokes) only the
    tokens pinned to the same tenant: it learns nothing of the user's other tenants."""
    tokens = ApiToken.objects.filter(user=user).select_related("tenant")
    if seen_by is not None and seen_by.tenant_id is not None:
        tokens = tokens.filter(tenant_id=seen_by.tenant_id)
    return tokens
