import pytest
from rest_framework.test import APIClient

from tenants.choices import TenantRole
from tenants.models import ApiToken
from tests.tenants.factories import MembershipFactory

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


def test_a_pinned_token_mints_only_same_tenant_tokens_and_the_audit_names_it(tenant, other_tenant, member_of):
    from tenants.choices import AuditAction
    from tenants.models import AuditEntry
    from tenants.services import api_token_create

    user = member_of(tenant, TenantRole.DEVELOPER)
    MembershipFactory(tenant=other_tenant, user=user, role=TenantRole.OWNER)
    pinned, key = api_token_create(user=user, name="ci", tenant=tenant)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {key}")

    unpinned = client.post("/api/v1/tokens/", {"name": "wide"}, format="json")
    assert unpinned.status_code == 403 and "pinned" in unpinned.json()["tenant"][0]
    other = client.post("/api/v1/tokens/", {"name": "x", "tenant": other_tenant.slug}, format="json")
    assert other.status_code == 403 and "another tenant" in other.json()["tenant"][0]
    same = client.post("/api/v1/tokens/", {"name": "same", "tenant": tenant.slug}, format="json")
    assert same.status_code == 201
    entry = AuditEntry.objects.filter(action=AuditAction.TOKEN_CREATE, target=same.json()["prefix"]).get()
    assert entry.data == {"name": "same", "minted_by": pinned.prefix}
    assert ApiToken.objects.filter(user=user).count() == 2


def test_an_unpinned_token_may_pin_to_any_tenant_of_its_user(tenant, member_of):
    from tenants.services import api_token_create

    user = member_of(tenant, TenantRole.DEVELOPER)
    _, key = api_token_create(user=user, name="laptop")
    client = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.post("/api/v1/tokens/", {"name": "ci", "tenant": tenant.slug}, format="json").status_code == 201
    assert client.post("/api/v1/tokens/", {"name": "wide"}, format="json").status_code == 201


def test_a_token_never_mints_for_another_user(tenant, member_of):
    from tenants.errors import PermissionDenied
    from tenants.services import api_token_create

    owner, stranger = member_of(tenant, TenantRole.OWNER), member_of(tenant, TenantRole.VIEWER)
    theirs, _ = api_token_create(user=stranger, name="theirs")
    with pytest.raises(PermissionDenied):
        api_token_create(user=owner, name="x", minted_by=theirs)
