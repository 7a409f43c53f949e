"""In a real browser against the real web server: log in, switch tenant, see the quota bars."""

import re

import pytest
from django.db import transaction

from tenants.choices import TenantRole
from tenants.models import Membership, Quota
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
