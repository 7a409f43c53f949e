import pytest
from rest_framework.test import APIClient

from tenants.choices import TenantRole
from tenants.models import ApiToken

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_listed_without_secret_and_revocable(tenant, member_of, client_for):
    user = member_of(tenant, TenantRole.DEVELOPER)
    client = client_for(user)
    created = client.post("/api/v1/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    key = created.json()["token"]
    assert key.startswith("hvm_") and len(key) > 40
    listing = client.get("/api/v1/tokens/").content.decode()
    assert key not in listing and created.json()["prefix"] in listing
    assert key not in repr(list(ApiToken.objects.values()))

    for header in (f"Token {key}", f"token={key}"):
        assert APIClient(HTTP_AUTHORIZATION=header).get("/api/v1/tenants/").status_code == 200

    assert client.delete(f"/api/v1/tokens/{created.json()['id']}/").status_code == 204
    assert APIClient(HTTP_AUTHORIZATION=f"Token {key}").get("/api/v1/tenants/").status_code == 401


def test_a_user_cannot_see_or_revoke_anothers_token(tenant, member_of, client_for):
    owner_client = client_for(member_of(tenant, TenantRole.DEVELOPER))
    token_id = owner_client.post("/api/v1/tokens/", {"name": "mine"}, format="json").json()["id"]
    thief = client_for(member_of(tenant, TenantRole.OWNER))
    assert thief.get(f"/api/v1/tokens/{token_id}/").status_code == 404
    assert thief.delete(f"/api/v1/tokens/{token_id}/").status_code == 404
    assert ApiToken.objects.get(pk=token_id).revoked_at is None


def test_pinning_a_token_to_a_foreign_tenant_is_400(tenant, other_tenant, member_of, client_for):
    response = client_for(member_of(tenant, TenantRole.VIEWER)).post(
        "/api/v1/tokens/", {"name": "x", "tenant": other_tenant.slug}, format="json"
    )
    assert response.status_code == 400 and "tenant" in response.json()
