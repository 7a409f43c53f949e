"""The server-rendered pages: same authorization as the API, inline form errors."""

import re

import pytest

from tenants.choices import TenantRole
from tenants.models import ImageRegistry, Membership, Quota, Tenant
from tests.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_login_page_renders_and_pages_need_login(client, tenant):
    assert client.get("/login/").status_code == 200
    response = client.get(f"/t/{tenant.slug}/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_overview_shows_a_quota_bar_per_resource(tenant, member_of, login):
    page = login(member_of(tenant, TenantRole.VIEWER)).get(f"/t/{tenant.slug}/").content.decode()
    assert page.count('class="quota-row') == 7
    assert 'data-resource="memory_mib"' in page


def test_a_new_tenants_next_step_is_a_deploy_from_the_platform_registry(tenant, member_of, login, settings):
    settings.EMBEDDED_REGISTRY_URL = "http://127.0.0.1:5000"
    page = login(member_of(tenant, TenantRole.OWNER)).get(f"/t/{tenant.slug}/").content.decode()
    step = re.search(r'<p class="hint" id="next-step">(.*?)</p>', page, re.S).group(1)
    assert step.startswith("Next step: deploy an image of the platform's registry local (127.0.0.1:5000) on <a")
    assert f'href="/t/{tenant.slug}/apps/deploy/"' in step and "or add the registry your own images" in step
    settings.EMBEDDED_REGISTRY_URL = ""
    page = login(member_of(tenant, TenantRole.OWNER)).get(f"/t/{tenant.slug}/").content.decode()
    assert "Next step: add the registry your images come from on the" in page


def test_home_redirects_to_a_tenant_of_the_user(tenant, member_of, login):
    response = login(member_of(tenant, TenantRole.VIEWER)).get("/")
    assert response.status_code == 302 and response["Location"] == f"/t/{tenant.slug}/"


def test_another_tenants_pages_are_404(tenant, other_tenant, member_of, login):
    client = login(member_of(other_tenant, TenantRole.OWNER))
    for path in ("/", "/members/", "/registries/"):
        assert client.get(f"/t/{tenant.slug}{path}").status_code == 404
    assert client.post(f"/t/{tenant.slug}/registries/", {"name": "x", "url": "https://x.test"}).status_code == 404
    assert client.post("/switch/", {"tenant": tenant.slug}).status_code == 404
    assert not ImageRegistry.objects.exists()


def test_registry_form_shows_errors_at_the_field_and_creates_nothing(tenant, member_of, login):
    client = login(member_of(tenant, TenantRole.ADMIN))
    page = client.post(f"/t/{tenant.slug}/registries/", {"name": "r", "url": "http://registry.example.test"})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-field="url"' in html and "loopback" in html
    assert not ImageRegistry.objects.exists()


def test_viewer_sees_members_but_cannot_post(tenant, member_of, login):
    client = login(member_of(tenant, TenantRole.VIEWER))
    assert client.get(f"/t/{tenant.slug}/members/").status_code == 200
    UserFactory(username="eve")
    assert client.post(f"/t/{tenant.slug}/members/", {"username": "eve", "role": "owner"}).status_code == 403
    assert not Membership.objects.filter(user__username="eve").exists()


def test_admin_adds_member_and_last_owner_is_kept(tenant, member_of, login):
    owner = member_of(tenant, TenantRole.OWNER)
    client = login(owner)
    UserFactory(username="dave")
    client.post(f"/t/{tenant.slug}/members/", {"username": "dave", "role": "developer"})
    assert Membership.objects.get(user__username="dave").role == "developer"
    own = Membership.objects.get(user=owner)
    response = client.post(f"/t/{tenant.slug}/members/{own.pk}/", {"action": "remove"}, follow=True)
    assert "last owner" in response.content.decode()
    assert Membership.objects.filter(pk=own.pk).exists()


def test_platform_pages_are_for_platform_admins_only(tenant, member_of, platform_admin, login, client):
    client.force_login(member_of(tenant, TenantRole.OWNER))
    assert client.get("/platform/tenants/").status_code == 403
    assert client.post(f"/platform/tenants/{tenant.slug}/quota/", {"vcpus": 1}).status_code == 403
    client.force_login(platform_admin)
    assert client.get("/platform/tenants/").status_code == 200
    client.post("/platform/tenants/", {"slug": "acme", "name": "ACME"})
    assert Tenant.objects.filter(slug="acme").exists()
    limits = Quota.objects.get(tenant=tenant).limits() | {"vcpus": 64}
    client.post(f"/platform/tenants/{tenant.slug}/quota/", limits)
    assert Quota.objects.get(tenant=tenant).vcpus == 64
    bad = client.post(f"/platform/tenants/{tenant.slug}/quota/", limits | {"vcpus": -5})
    assert 'data-field="vcpus"' in bad.content.decode() and Quota.objects.get(tenant=tenant).vcpus == 64


def test_token_page_shows_the_secret_once(member_of, tenant, login):
    client = login(member_of(tenant, TenantRole.DEVELOPER))
    page = client.post("/account/tokens/", {"name": "cli"}).content.decode()
    key = re.search(r'id="new-token">(hvm_[^<]+)<', page).group(1)
    listing = client.get("/account/tokens/").content.decode()
    assert key[:12] in listing and key not in listing
