"""The deploy pages in a real browser against the real stack: daphne, a Celery worker, beat,
a host worker booting real HyperVMs (TCG), PostgreSQL, Redis and the test registry.

The pages change without a reload when events arrive on their WebSocket (LIVE-CONTRACT); a
marker set on ``window`` after each navigation proves no reload happened in between."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.db import close_old_connections

from portal.choices import INSTANCE_ACTIVE, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Instance
from portal.services.apps import app_create, app_delete, app_scale
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ImageRegistry, Membership
from tests.support.browser import screenshot
from tests.support.oci_images import HTTPD_PORT, PRINTER_EXIT_CODE, PRINTER_STDOUT_LINES
from tests.support.tenant_access import registry_add
from tests.tenants.factories import TenantFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "pw-for-tests-1"
BOOT_WAIT_MS = 240_000
CONSOLE_LINE = "hello-from-the-console greeting=hi"
# The demo image's web server, preceded by a line on stdout for the console.
DEMO_CMD = f'echo "hello-from-the-console greeting=$GREETING"; exec /bin/httpd -f -p {HTTPD_PORT} -h /www'
STATUS_ORDER = ["staged", "pulling", "preparing", "booting", "running", "healthy"]


def db_wait(what: str, predicate, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        close_old_connections()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def acme(registry, test_images):
    """Tenant acme, owned by alice, with the test registry as its "local" registry."""
    user = UserFactory(username="alice")
    tenant = TenantFactory(slug="acme", name="Acme")
    Membership.objects.create(tenant=tenant, user=user, role=TenantRole.OWNER)
    registry_add(tenant_access_resolve(user=user, slug="acme"), registry)
    return tenant


def log_in(page, url: str, username: str) -> None:
    page.goto(url + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/.+/$"))


def mark_loaded(page) -> None:
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"


def record_chips(page, rows: str, key: str, chip: str) -> None:
    """Keep, per row (keyed by its ``key`` attribute), every text its status chip shows, in the
    order shown: a MutationObserver sees each fragment swap, whatever triggered it."""
    page.evaluate(
        """([rows, key, chip]) => {
        window.__chips = {};
        const note = () => document.querySelectorAll(rows).forEach((row) => {
          const shown = row.querySelector(chip);
          if (!shown) return;
          const seen = (window.__chips[row.getAttribute(key)] ||= []);
          const text = shown.textContent.trim();
          if (seen[seen.length - 1] !== text) seen.push(text);
        });
        note();
        new MutationObserver(note).observe(document.body, {childList: true, subtree: true, characterData: true});
      }""",
        [rows, key, chip],
    )


def recorded_chips(page) -> dict[str, list[str]]:
    return page.evaluate("window.__chips")


def record_instance_statuses(page) -> None:
    record_chips(page, "#instance-table tr[data-instance]", "data-instance", ".badge")


def test_deploy_by_click_watch_it_boot_scale_stop_and_delete(live_stack, one_host, acme, page):
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, live_stack.url, "alice")
    page.goto(live_stack.url + "/t/acme/apps/")
    assert "No apps yet" in page.locator("[data-fragment=apps]").inner_text()
    page.click("#deploy-demo")
    page.wait_for_url(re.compile(r".*/apps/deploy/\?registry=.*"))
    assert page.input_value("#id_image") == "demo/hello:latest"
    assert page.input_value("#id_ports") == str(HTTPD_PORT)
    page.fill("#id_app_id", "/hello")
    page.fill("#id_cmd", DEMO_CMD)
    page.fill("#id_env", "GREETING=hi")
    screenshot(page, "apps-deploy-form")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/acme/apps/\d+/$"))
    app = App.objects.get(tenant=acme, marathon_id="/hello")
    assert app.current_version.definition["app"]["cmd"] == DEMO_CMD

    mark_loaded(page)
    record_instance_statuses(page)
    healthy = page.locator('#instance-table tr[data-status="healthy"]')
    healthy.wait_for(timeout=BOOT_WAIT_MS)
    seen = recorded_chips(page)[healthy.get_attribute("data-instance")]
    assert [s for s in STATUS_ORDER if s in seen] == seen, seen  # in order, none invented
    assert "booting" in seen and seen[-1] == "healthy", seen  # the boot itself was shown live
    for phase in ("pulling", "preparing", "booting", "running"):
        chip = healthy.locator(f'[data-phase="{phase}"]')
        assert "done" in chip.get_attribute("class")
        assert re.search(r"\d+\.\d s", chip.inner_text()), chip.inner_text()
    page.locator("#console").scroll_into_view_if_needed()  # xterm.js renders only what is on screen
    page.locator("#console").filter(has_text=CONSOLE_LINE).wait_for(timeout=60_000)
    page.locator('[data-fragment="deployment"] tr[data-status="succeeded"]').first.wait_for(timeout=60_000)
    assert page.locator("[data-count=running]").first.inner_text() == "1"
    assert_not_reloaded(page)
    screenshot(page, "app-page-running")

    page.goto(live_stack.url + "/t/acme/apps/")
    assert page.locator('tr[data-app="/hello"] .badge').inner_text() == "running"
    screenshot(page, "app-list")
    page.goto(live_stack.url + f"/t/acme/apps/{app.pk}/")

    page.fill("#actions-form #id_instances", "2")
    page.click("#actions-form button[value=scale]")
    page.wait_for_load_state()
    mark_loaded(page)
    page.locator('#instance-table tr[data-status="healthy"]').nth(1).wait_for(timeout=BOOT_WAIT_MS)
    assert page.locator("[data-count=running]").first.inner_text() == "2"
    assert_not_reloaded(page)
    assert len([i for i in Instance.objects.filter(app=app) if i.status in INSTANCE_ACTIVE]) == 2
    page.locator(".deployment.running").wait_for(state="detached", timeout=60_000)

    page.click("#actions-form button[value=stop]")
    page.wait_for_load_state()
    mark_loaded(page)
    page.get_by_text("Stopped: no instances run").wait_for(timeout=120_000)
    assert_not_reloaded(page)
    assert not Instance.objects.filter(app=app, status__in=INSTANCE_ACTIVE).exists()

    page.click("button[value=delete]")
    page.wait_for_url(re.compile(r".*/t/acme/apps/$"))
    mark_loaded(page)
    page.get_by_text("No apps yet").wait_for(timeout=120_000)
    assert_not_reloaded(page)
    db_wait("the app is gone", lambda: not App.objects.filter(pk=app.pk).exists())
    from vmworker.runtime import HyperVMRuntime, RuntimeSettings

    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    assert [s.instance_id for s in runtime.list_instances() if s.state in ("running", "booting")] == []


def test_a_failed_instance_explains_itself(live_stack, one_host, acme, test_images, page):
    log_in(page, live_stack.url, "alice")
    page.goto(live_stack.url + "/t/acme/apps/deploy/?mode=json")
    body = {"id": "/printer", "instances": 1, "cpus": 0.5, "mem": 128, "backoffSeconds": 30, "portDefinitions": []}
    body["container"] = {"docker": {"image": test_images["printer"].reference}}
    page.fill("#id_definition_json", json.dumps(body, indent=2))
    page.click("#deploy-json button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/acme/apps/\d+/$"))
    mark_loaded(page)
    failed = page.locator('#ended-table tr[data-status="failed"]').first
    failed.wait_for(timeout=BOOT_WAIT_MS)
    assert f"exited with code {PRINTER_EXIT_CODE}" in failed.locator(".failure-reason").inner_text()
    assert f"exit {PRINTER_EXIT_CODE}" in failed.inner_text()
    assert "launch failed in a row" in page.locator("#backoff").inner_text()
    page.locator("#console").scroll_into_view_if_needed()
    page.locator("#console").filter(has_text=PRINTER_STDOUT_LINES[0]).wait_for(timeout=60_000)
    assert_not_reloaded(page)
    screenshot(page, "app-page-failed-instance")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("button[value=delete]")
    db_wait("the app is gone", lambda: not App.objects.filter(marathon_id="/printer").exists())


def test_invalid_marathon_json_shows_errors_at_the_field_and_deploys_nothing(live_stack, acme, page):
    log_in(page, live_stack.url, "alice")
    page.goto(live_stack.url + "/t/acme/apps/deploy/")
    page.click("#tab-json")
    page.fill("#id_definition_json", '{"id": "/broken",\n "cpus": 0.5,,\n}')
    page.click("#deploy-json button[type=submit]")
    field = page.locator('[data-field="definition_json"]')
    assert "invalid" in field.get_attribute("class")
    assert "line 2, column 14" in field.locator(".field-error").inner_text()

    body = {"id": "/broken", "cpus": -1, "mem": 64, "instances": 1, "container": {"docker": {"image": "x"}}}
    page.fill("#id_definition_json", json.dumps(body, indent=2))
    page.click("#deploy-json button[type=submit]")
    error = page.locator('.path-errors li[data-path="/cpus"]')
    assert error.is_visible() and "/cpus" in error.inner_text()
    assert "invalid" in page.locator('[data-field="definition_json"]').get_attribute("class")
    screenshot(page, "apps-deploy-json-errors")
    assert not App.objects.exists() and not Instance.objects.exists()


@pytest.fixture
def secret_app(acme):
    """An app of acme (no instances), and mallory, the owner of another tenant."""
    owner = Membership.objects.get(tenant=acme).user
    definition = parse_app_definition({"id": "/secret", "instances": 0, "container": {"docker": {"image": "x/y"}}})
    app = app_create(access=tenant_access_resolve(user=owner, slug="acme"), definition=definition).app
    outsider = UserFactory(username="mallory")
    Membership.objects.create(tenant=TenantFactory(slug="other"), user=outsider, role=TenantRole.OWNER)
    return app


def test_a_user_of_another_tenant_gets_404_for_the_app_page(live_stack, secret_app, page):
    app = secret_app
    log_in(page, live_stack.url, "mallory")
    for path in (f"/t/acme/apps/{app.pk}/", f"/t/other/apps/{app.pk}/", "/t/acme/apps/"):
        response = page.goto(live_stack.url + path)
        assert response.status == 404, path
        assert "/secret" not in page.content()


def test_a_user_of_another_tenant_cannot_open_the_app_websocket(live_stack, secret_app, page):
    app = secret_app
    log_in(page, live_stack.url, "mallory")
    ws = live_stack.url.replace("http://", "ws://")
    outcome = page.evaluate(
        """(url) => new Promise((resolve) => {
          const socket = new WebSocket(url);
          const messages = [];
          socket.onmessage = (event) => messages.push(event.data);
          socket.onclose = (event) => resolve({code: event.code, messages});
        })""",
        f"{ws}/ws/t/acme/apps/{app.pk}/?after=0",
    )
    assert outcome == {"code": 4403, "messages": []}


def test_hosts_page_shows_capacity_virt_type_and_heartbeat(live_stack, one_host, page):
    UserFactory(username="root-admin", is_staff=True)
    page.goto(live_stack.url + "/login/")
    page.fill("#id_username", "root-admin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    page.goto(live_stack.url + "/platform/hosts/")
    row = page.locator(f'tr[data-host="{one_host.name}"]')
    assert row.locator(".badge").inner_text() == "up"
    host = ComputeHost.objects.get(name=one_host.name)
    assert f" / {host.vcpus}" in row.inner_text() and ("KVM" in row.inner_text() or "TCG" in row.inner_text())
    assert re.search(r"\d+\.\d s ago", row.inner_text())
    screenshot(page, "platform-hosts")


def live_app(test_images, app_id: str) -> dict:
    """The demo web server with a TCP check (no host port clash with other sessions: port 0)."""
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "container": {
            "docker": {"image": test_images["httpd"].reference},
            "portMappings": [{"containerPort": HTTPD_PORT, "hostPort": 0}],
        },
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [{"protocol": "TCP", "portIndex": 0, "intervalSeconds": 1, "gracePeriodSeconds": 120}],
    }


def test_the_app_list_shows_apps_and_status_changes_made_elsewhere_live(live_stack, one_host, acme, test_images, page):
    log_in(page, live_stack.url, "alice")
    page.goto(live_stack.url + "/t/acme/apps/")
    page.get_by_text("No apps yet").wait_for()
    mark_loaded(page)
    record_chips(page, "#apps tr[data-app]", "data-app", ".app-status .badge")
    access = tenant_access_resolve(user=Membership.objects.get(tenant=acme).user, slug="acme")

    app = app_create(access=access, definition=parse_app_definition(live_app(test_images, "/elsewhere"))).app
    row = page.locator('#apps tr[data-app="/elsewhere"]')
    row.wait_for()
    row.locator(".badge", has_text="running").wait_for(timeout=BOOT_WAIT_MS)
    assert row.locator("[data-count=running]").inner_text() == "1"
    app_scale(access=access, app=App.objects.get(pk=app.pk), instances=0)
    row.locator(".badge", has_text="stopped").wait_for(timeout=120_000)
    assert row.locator("[data-count=target]").inner_text() == "0"
    assert_not_reloaded(page)
    seen = recorded_chips(page)["/elsewhere"]
    assert seen[0] == "deploying" and "running" in seen and seen[-1] == "stopped", seen
    screenshot(page, "app-list-live")

    app_delete(access=access, app=App.objects.get(pk=app.pk), force=True)
    page.get_by_text("No apps yet").wait_for(timeout=120_000)
    assert_not_reloaded(page)


@pytest.fixture
def beta(acme):
    """Tenant beta, owned by bob: no registry of its own (acme, another tenant, has one)."""
    user = UserFactory(username="bob")
    tenant = TenantFactory(slug="beta", name="Beta")
    Membership.objects.create(tenant=tenant, user=user, role=TenantRole.OWNER)
    return tenant


def test_a_tenant_without_registries_deploys_from_the_embedded_registry_then_restarts(
    live_stack, one_host, beta, registry, test_images, page
):
    log_in(page, live_stack.url, "bob")
    page.goto(live_stack.url + "/t/beta/apps/")
    page.click("#deploy-demo")
    page.wait_for_url(re.compile(r".*/apps/deploy/\?registry=.*"))
    assert page.input_value("#id_registry") == "platform"
    assert page.locator("#id_registry option:checked").inner_text() == "local (platform registry)"
    assert f"in local ({registry.host_port}, the platform's" in page.locator("#id_image_help").inner_text()
    page.fill("#id_app_id", "/from-local")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/beta/apps/\d+/$"))
    app = App.objects.get(tenant=beta, marathon_id="/from-local")
    image = f"{registry.host_port}/demo/hello:latest"
    assert app.current_version.definition["app"]["container"]["docker"]["image"] == image
    assert not ImageRegistry.objects.filter(tenant=beta).exists()
    # The registry asks for credentials: a healthy instance means the worker pulled with the embedded ones.
    first = page.locator('#instance-table tr[data-status="healthy"]')
    first.wait_for(timeout=BOOT_WAIT_MS)
    old_id = first.get_attribute("data-instance")
    page.locator('[data-fragment="deployment"] tr[data-status="succeeded"]').first.wait_for(timeout=60_000)

    # Restart: a new VM replaces the old one; the page follows without a reload.
    page.click("#actions-form button[value=restart]")
    page.wait_for_load_state()
    mark_loaded(page)
    record_instance_statuses(page)
    replacement = page.locator(f'#instance-table tr[data-status="healthy"]:not([data-instance="{old_id}"])')
    replacement.wait_for(timeout=BOOT_WAIT_MS)
    page.locator(f'#instance-table tr[data-instance="{old_id}"]').wait_for(state="detached", timeout=120_000)
    page.locator(f'#ended-table tr[data-instance="{old_id}"][data-status="stopped"]').wait_for(timeout=60_000)
    assert page.locator("#instance-table tr[data-instance]").count() == 1
    assert_not_reloaded(page)
    new_id = replacement.get_attribute("data-instance")
    assert recorded_chips(page)[new_id][-1] == "healthy"
    assert Instance.objects.get(pk=old_id).status == InstanceStatus.STOPPED
    screenshot(page, "app-page-restarted")
    owner = Membership.objects.get(tenant=beta).user
    app_delete(access=tenant_access_resolve(user=owner, slug="beta"), app=App.objects.get(pk=app.pk), force=True)
    db_wait("the app is gone", lambda: not App.objects.filter(pk=app.pk).exists())
