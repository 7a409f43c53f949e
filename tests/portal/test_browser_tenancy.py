"""In a real browser against the real web server: log in, switch tenant, see the quota bars."""

import re

import pytest
from django.db import transaction

from tenants.choices import TenantRole
from tenants.models import ImageRegistry, Membership, Quota
from tenants.services import ResourceRequest, quota_reserve
from tests.support.browser import screenshot
from tests.tenants.factories import TenantFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_login_switch_tenant_and_see_quota_bars(live_stack, page):
    user = UserFactory(username="alice")
    first, second = TenantFactory(slug="alpha", name="Alpha"), TenantFactory(slug="beta", name="Beta")
    Membership.objects.create(tenant=first, user=user, role=TenantRole.OWNER)
    Membership.objects.create(tenant=second, user=user, role=TenantRole.VIEWER)
    Quota.objects.filter(tenant=second).update(memory_mib=2048)
    with transaction.atomic():
        quota_reserve(tenant=second, owner_kind="test", owner_id="1", request=ResourceRequest(memory_mib=512))

    page.goto(live_stack.url + "/t/alpha/")
    assert "/login/" in page.url
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/alpha/$"))
    assert page.locator(".quota-row").count() == 7

    page.select_option("#tenant-switcher", "beta")
    page.wait_for_url(re.compile(r".*/t/beta/$"))
    assert page.locator("h1").inner_text().startswith("Beta")
    memory = page.locator('.quota-row[data-resource="memory_mib"]')
    assert memory.locator("td.num").inner_text().strip() == "512 / 2048"
    assert memory.locator(".bar").get_attribute("aria-valuenow") == "512"
    width = memory.locator(".bar span").evaluate("el => el.getBoundingClientRect().width")
    full = memory.locator(".bar").evaluate("el => el.getBoundingClientRect().width")
    assert abs(width / full - 0.25) < 0.02
    screenshot(page, "tenant-overview")


def test_wrong_password_is_refused(live_stack, page):
    UserFactory(username="bob")
    page.goto(live_stack.url + "/login/")
    page.fill("#id_username", "bob")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text().strip() != ""
    assert "/login/" in page.url


def test_tenant_admin_pages_members_registries_quota_and_overview(live_stack, page):
    """What a tenant admin works with, seen in the browser, each page saved as a screenshot."""
    admin = UserFactory(username="carol", is_staff=True)
    tenant = TenantFactory(slug="gamma", name="Gamma")
    Membership.objects.create(tenant=tenant, user=admin, role=TenantRole.OWNER)
    Membership.objects.create(tenant=tenant, user=UserFactory(username="dave"), role=TenantRole.DEVELOPER)
    Membership.objects.create(tenant=tenant, user=UserFactory(username="erin"), role=TenantRole.VIEWER)
    ImageRegistry.objects.create(
        tenant=tenant, name="corp", url="https://registry.corp.test", username="robot", password_encrypted=b"x"
    )
    Quota.objects.filter(tenant=tenant).update(vcpus=4, instances=4)
    with transaction.atomic():
        quota_reserve(tenant=tenant, owner_kind="test", owner_id="1", request=ResourceRequest(vcpus=3, instances=2))

    page.goto(live_stack.url + "/login/")
    page.fill("#id_username", "carol")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.wait_for_load_state()

    page.goto(live_stack.url + "/t/gamma/")
    assert page.locator(".quota-row").count() == 7
    assert page.locator('.quota-row[data-resource="vcpus"] td.num').inner_text().strip() == "3 / 4"
    screenshot(page, "tenant-admin-overview")

    page.goto(live_stack.url + "/t/gamma/members/")
    for username, role in (("carol", "owner"), ("dave", "developer"), ("erin", "viewer")):
        assert page.locator(f'tr[data-username="{username}"] select').input_value() == role
    screenshot(page, "tenant-admin-members")

    page.goto(live_stack.url + "/t/gamma/registries/")
    corp = page.locator('tr[data-registry="corp"]')
    assert "https://registry.corp.test" in corp.inner_text() and "robot" in corp.inner_text()
    assert "the platform's embedded registry" in page.locator("#platform-registry").inner_text()
    screenshot(page, "tenant-admin-registries")

    page.goto(live_stack.url + "/platform/tenants/gamma/quota/")
    assert page.locator('.quota-row[data-resource="instances"] td.num').inner_text().strip() == "2 / 4"
    assert page.input_value("input[name=vcpus]") == "4"
    screenshot(page, "tenant-admin-quota")
