"""Test helpers for tenants that deploy from the test registry."""


def registry_add(access, registry, *, name: str = "local"):
    """Registers the test ``registry`` (a tests.support.registry registry) with the tenant of ``access``."""
    from tenants.services import registry_create
    from tests.support.registry import platform_allowlist_add

    platform_allowlist_add(registry.host_port)
    return registry_create(
        access=access,
        name=name,
        url=f"http://{registry.host_port}",
        username=registry.username,
        password=registry.password,
        insecure=True,
    )


def owner_access_with_registry(tenant, member_of, registry):
    """An owner's access to ``tenant``, whose registries hold the test ``registry`` (as "local")."""
    from tenants.access import tenant_access_resolve
    from tenants.choices import TenantRole

    access = tenant_access_resolve(user=member_of(tenant, TenantRole.OWNER), slug=tenant.slug)
    registry_add(access, registry)
    return access
