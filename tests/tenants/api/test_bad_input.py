"""Bad input gets a clear 4xx naming the field, never a 5xx, and creates nothing."""

import pytest

from tenants.choices import TenantRole
from tenants.models import AuditEntry, ImageRegistry, Quota, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(tenant, member_of, client_for):
    return client_for(member_of(tenant, TenantRole.OWNER))


def counts():
    return Tenant.objects.count(), ImageRegistry.objects.count(), AuditEntry.objects.count()


def test_malformed_json_is_400(tenant, admin_client):
    before = counts()
    response = admin_client.post(
        f"/api/v1/tenants/{tenant.slug}/registries/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert counts() == before


def test_a_json_array_instead_of_an_object_is_400(tenant, admin_client):
    response = admin_client.post(f"/api/v1/tenants/{tenant.slug}/registries/", [1, 2], format="json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "r", "url": "https://r.test", "colour": "red"}, "colour"),
        ({"url": "https://r.test"}, "name"),
        ({"name": "r", "url": "ftp://r.test"}, "url"),
        ({"name": "r", "url": "https://r.test/some/path"}, "url"),
        ({"name": "r", "url": "https://user:pw@r.test"}, "url"),
        ({"name": "r", "url": "http://r.test"}, "url"),
        ({"name": "r", "url": "http://127.0.0.1:5000"}, "insecure"),
        ({"name": "r", "url": "https://r.test", "insecure": True}, "insecure"),
        ({"name": "r", "url": "https://r.test:99999"}, "url"),
        ({"name": "r", "url": "https://"}, "url"),
        ({"name": "r" * 65, "url": "https://r.test"}, "name"),
    ],
)
def test_invalid_registries_name_the_field(tenant, admin_client, body, field):
    before = counts()
    response = admin_client.post(f"/api/v1/tenants/{tenant.slug}/registries/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert counts() == before


def test_duplicate_registry_name_is_400_on_name(tenant, admin_client):
    path = f"/api/v1/tenants/{tenant.slug}/registries/"
    assert admin_client.post(path, {"name": "r", "url": "https://a.test"}, format="json").status_code == 201
    response = admin_client.post(path, {"name": "r", "url": "https://b.test"}, format="json")
    assert response.status_code == 400 and "name" in response.json()
    assert ImageRegistry.objects.count() == 1


def test_a_registry_on_a_platform_address_is_422_unless_the_platform_allows_it(tenant, admin_client, settings):
    path = f"/api/v1/tenants/{tenant.slug}/registries/"
    body = {"name": "local", "url": "http://127.0.0.1:5001", "insecure": True}
    refused = admin_client.post(path, body, format="json")
    assert refused.status_code == 422 and "loopback" in refused.json()["url"][0]
    assert not ImageRegistry.objects.exists()

    settings.REGISTRY_HOST_ALLOWLIST = ["127.0.0.1:5001"]
    assert admin_client.post(path, body, format="json").status_code == 201


def test_loopback_registry_may_be_plain_http_when_marked_insecure(tenant, admin_client, settings):
    settings.REGISTRY_HOST_ALLOWLIST = ["127.0.0.1:5000"]
    response = admin_client.post(
        f"/api/v1/tenants/{tenant.slug}/registries/",
        {"name": "local", "url": "http://127.0.0.1:5000", "insecure": True},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["url"] == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"vcpus": -1}, "vcpus"),
        ({"memory_mib": 10**12}, "memory_mib"),
        ({"instances": "many"}, "instances"),
        ({"instances": 1.5}, "instances"),
        ({"gpus": 2}, "gpus"),
    ],
)
def test_invalid_quota_values_name_the_field(tenant, platform_admin, client_for, body, field):
    before = Quota.objects.get(tenant=tenant).limits()
    response = client_for(platform_admin).patch(f"/api/v1/tenants/{tenant.slug}/quota/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Quota.objects.get(tenant=tenant).limits() == before


def test_put_quota_needs_every_limit(tenant, platform_admin, client_for):
    response = client_for(platform_admin).put(f"/api/v1/tenants/{tenant.slug}/quota/", {"vcpus": 2}, format="json")
    assert response.status_code == 400
    assert "memory_mib" in response.json()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"slug": "Bad Slug", "name": "x"}, "slug"),
        ({"slug": "-x", "name": "x"}, "slug"),
        ({"slug": "ok-slug", "name": "x", "owner": "nobody-here"}, "owner"),
        ({"slug": "ok-slug"}, "name"),
        ({"slug": "ok-slug", "name": "x", "plan": "gold"}, "plan"),
    ],
)
def test_invalid_tenants_name_the_field(platform_admin, client_for, body, field):
    before = Tenant.objects.count()
    response = client_for(platform_admin).post("/api/v1/tenants/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Tenant.objects.count() == before


def test_duplicate_tenant_slug_is_400(tenant, platform_admin, client_for):
    response = client_for(platform_admin).post("/api/v1/tenants/", {"slug": tenant.slug, "name": "x"}, format="json")
    assert response.status_code == 400 and "slug" in response.json()


def test_unknown_role_and_unknown_user_name_the_field(tenant, admin_client):
    path = f"/api/v1/tenants/{tenant.slug}/members/"
    assert "role" in admin_client.post(path, {"username": "x", "role": "god"}, format="json").json()
    response = admin_client.post(path, {"username": "ghost", "role": "viewer"}, format="json")
    assert response.status_code == 400 and "username" in response.json()


def test_unauthenticated_requests_are_401_or_403():
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/tenants/").status_code in (401, 403)
    assert APIClient(HTTP_AUTHORIZATION="Token nope").get("/api/v1/tenants/").status_code == 401
