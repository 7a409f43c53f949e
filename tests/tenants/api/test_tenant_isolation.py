"""A member of another tenant reaches nothing of this tenant: every tenant-scoped endpoint
answers 404 (not 403, which would confirm the tenant exists) and changes nothing."""

import pytest

from tenants import services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ApiToken, ImageRegistry, Membership, Quota

pytestmark = pytest.mark.django_db


@pytest.fixture
def victim(tenant, member_of):
    owner = member_of(tenant, TenantRole.OWNER)
    registry = services.registry_create(
        access=tenant_access_resolve(user=owner, slug=tenant.slug),
        name="private",
        url="https://registry.victim.test",
        username="bot",
        password="victim-secret",
    )
    membership = Membership.objects.get(tenant=tenant, user=owner)
    return {"tenant": tenant, "registry": registry, "membership": membership}


@pytest.fixture
def intruder(other_tenant, member_of):
    return member_of(other_tenant, TenantRole.OWNER)


def endpoints(victim):
    t, r, m = victim["tenant"].slug, victim["registry"].pk, victim["membership"].pk
    return [
        ("get", f"/api/v1/tenants/{t}/", None),
        ("get", f"/api/v1/tenants/{t}/members/", None),
        ("post", f"/api/v1/tenants/{t}/members/", {"username": "x", "role": "viewer"}),
        ("get", f"/api/v1/tenants/{t}/members/{m}/", None),
        ("patch", f"/api/v1/tenants/{t}/members/{m}/", {"role": "viewer"}),
        ("delete", f"/api/v1/tenants/{t}/members/{m}/", None),
        ("get", f"/api/v1/tenants/{t}/quota/", None),
        ("patch", f"/api/v1/tenants/{t}/quota/", {"vcpus": 1}),
        ("get", f"/api/v1/tenants/{t}/registries/", None),
        ("post", f"/api/v1/tenants/{t}/registries/", {"name": "n", "url": "https://x.test"}),
        ("get", f"/api/v1/tenants/{t}/registries/{r}/", None),
        ("patch", f"/api/v1/tenants/{t}/registries/{r}/", {"name": "stolen"}),
        ("delete", f"/api/v1/tenants/{t}/registries/{r}/", None),
        ("post", f"/api/v1/tenants/{t}/registries/{r}/check/", None),
    ]


def test_every_tenant_endpoint_is_404_for_another_tenants_member(victim, intruder, client_for):
    client = client_for(intruder)
    before = (
        Membership.objects.count(),
        ImageRegistry.objects.count(),
        Quota.objects.get(tenant=victim["tenant"]).vcpus,
    )
    for method, path, body in endpoints(victim):
        response = getattr(client, method)(path, body, format="json")
        assert response.status_code == 404, (method, path, response.status_code)
        assert b"victim" not in response.content
    after = (
        Membership.objects.count(),
        ImageRegistry.objects.count(),
        Quota.objects.get(tenant=victim["tenant"]).vcpus,
    )
    assert after == before
    assert ImageRegistry.objects.get(pk=victim["registry"].pk).name == "private"


def test_ids_of_another_tenant_under_own_tenant_are_404(victim, intruder, other_tenant, client_for):
    client = client_for(intruder)
    own = other_tenant.slug
    for path in (
        f"/api/v1/tenants/{own}/registries/{victim['registry'].pk}/",
        f"/api/v1/tenants/{own}/members/{victim['membership'].pk}/",
    ):
        assert client.get(path).status_code == 404
        assert client.delete(path).status_code == 404
    assert ImageRegistry.objects.filter(pk=victim["registry"].pk).exists()


def test_tenant_list_shows_only_own_tenants(victim, intruder, other_tenant, client_for):
    response = client_for(intruder).get("/api/v1/tenants/")
    assert [row["slug"] for row in response.json()["results"]] == [other_tenant.slug]


def test_token_pinned_to_a_tenant_reaches_no_other_tenant(tenant, other_tenant, member_of):
    from rest_framework.test import APIClient

    user = member_of(tenant, TenantRole.ADMIN)
    Membership.objects.create(tenant=other_tenant, user=user, role=TenantRole.ADMIN)
    _, key = services.api_token_create(user=user, name="ci", tenant=tenant)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(f"/api/v1/tenants/{tenant.slug}/members/").status_code == 200
    assert client.get(f"/api/v1/tenants/{other_tenant.slug}/members/").status_code == 404
    assert [t["slug"] for t in client.get("/api/v1/tenants/").json()["results"]] == [tenant.slug]
    assert ApiToken.objects.get(prefix=key[:12]).last_used_at is not None
