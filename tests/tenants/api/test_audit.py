"""The tenant's audit log in the API and on its page: admins and owners read it, developers and
viewers get 403, another tenant's members 404 (the one rule), newest first, filtered by action."""

import pytest

from tenants.choices import AuditAction, TenantRole
from tenants.models import AuditEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def entries(tenant, other_tenant, member_of):
    actor = member_of(tenant, TenantRole.DEVELOPER)
    first = AuditEntry.objects.create(tenant=tenant, actor=actor, action=AuditAction.EXEC_SHELL, target="i-1")
    second = AuditEntry.objects.create(tenant=tenant, actor=actor, action=AuditAction.EXEC_RUN, target="i-2")
    AuditEntry.objects.create(tenant=other_tenant, actor=None, action=AuditAction.EXEC_SHELL, target="theirs")
    return first, second


@pytest.mark.parametrize(
    ("role", "status"),
    [(TenantRole.OWNER, 200), (TenantRole.ADMIN, 200), (TenantRole.DEVELOPER, 403), (TenantRole.VIEWER, 403)],
)
def test_admins_read_the_audit_log_and_others_do_not(tenant, member_of, client_for, login, entries, role, status):
    user = member_of(tenant, role)
    response = client_for(user).get(f"/api/v1/tenants/{tenant.slug}/audit/")
    page = login(user).get(f"/t/{tenant.slug}/audit/")

    assert response.status_code == status
    assert page.status_code == status
    if status == 200:
        assert [e["target"] for e in response.json()["results"]] == ["i-2", "i-1"]
        assert b"theirs" not in page.content and b"exec.shell" in page.content


def test_filtered_by_action_and_hidden_from_other_tenants(tenant, other_tenant, member_of, client_for, entries):
    owner = member_of(tenant, TenantRole.OWNER)
    stranger = member_of(other_tenant, TenantRole.OWNER)

    shells = client_for(owner).get(f"/api/v1/tenants/{tenant.slug}/audit/?action=exec.shell").json()

    assert [(e["action"], e["target"]) for e in shells["results"]] == [("exec.shell", "i-1")]
    assert client_for(stranger).get(f"/api/v1/tenants/{tenant.slug}/audit/").status_code == 404
