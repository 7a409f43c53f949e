"""Test helpers for tenants that deploy from the test registry."""


def owner_access_with_registry(tenant, member_of, registry):
    """An owner's access to ``tenant``, whose registries hold the test ``registry`` (as "local")."""
    from tenants.access import tenant_access_resolve
    from tenants.choices import TenantRole
    from tenants.services import registry_create

    access = tenant_access_resolve(user=member_of(tenant, TenantRole.OWNER), slug=tenant.slug)
    registry_create(
        access=access,
        name="local",
        url=f"http://{registry.host_port}",
        username=registry.username,
        password=registry.password,
        insecure=True,
    )
    return access
