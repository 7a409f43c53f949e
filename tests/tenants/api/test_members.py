import pytest

from tenants.choices import TenantRole
from tenants.models import AuditEntry, Membership
from tests.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_admin_adds_changes_and_removes_a_member_with_audit(tenant, member_of, client_for):
    admin = member_of(tenant, TenantRole.ADMIN)
    UserFactory(username="carol", email="carol@corp.test")
    client = client_for(admin)
    created = client.post(
        f"/api/v1/tenants/{tenant.slug}/members/", {"username": "carol@corp.test", "role": "viewer"}, format="json"
    )
    assert created.status_code == 201 and created.json()["username"] == "carol"
    path = f"/api/v1/tenants/{tenant.slug}/members/{created.json()['id']}/"
    assert client.patch(path, {"role": "developer"}, format="json").json()["role"] == "developer"
    assert client.delete(path).status_code == 204
    assert not Membership.objects.filter(user__username="carol").exists()
    assert list(AuditEntry.objects.filter(tenant=tenant).order_by("created_at").values_list("action", flat=True)) == [
        "member.add",
        "member.role_change",
        "member.remove",
    ]


def test_the_last_owner_can_be_neither_removed_nor_demoted(tenant, member_of, client_for):
    owner = member_of(tenant, TenantRole.OWNER)
    client = client_for(owner)
    path = f"/api/v1/tenants/{tenant.slug}/members/{Membership.objects.get(user=owner).pk}/"
    demote = client.patch(path, {"role": "admin"}, format="json")
    assert demote.status_code == 409 and "last owner" in demote.content.decode()
    assert client.delete(path).status_code == 409
    assert Membership.objects.get(user=owner).role == TenantRole.OWNER


def test_with_two_owners_one_may_step_down(tenant, member_of, client_for):
    first, second = member_of(tenant, TenantRole.OWNER), member_of(tenant, TenantRole.OWNER)
    path = f"/api/v1/tenants/{tenant.slug}/members/{Membership.objects.get(user=first).pk}/"
    assert client_for(second).patch(path, {"role": "developer"}, format="json").status_code == 200


def test_an_admin_cannot_demote_or_remove_an_owner(tenant, member_of, client_for):
    owner = member_of(tenant, TenantRole.OWNER)
    member_of(tenant, TenantRole.OWNER)
    client = client_for(member_of(tenant, TenantRole.ADMIN))
    path = f"/api/v1/tenants/{tenant.slug}/members/{Membership.objects.get(user=owner).pk}/"
    assert client.patch(path, {"role": "viewer"}, format="json").status_code == 403
    assert client.delete(path).status_code == 403


def test_adding_an_existing_member_twice_is_400(tenant, member_of, client_for):
    viewer = member_of(tenant, TenantRole.VIEWER)
    response = client_for(member_of(tenant, TenantRole.OWNER)).post(
        f"/api/v1/tenants/{tenant.slug}/members/", {"username": viewer.username, "role": "admin"}, format="json"
    )
    assert response.status_code == 400 and "username" in response.json()
