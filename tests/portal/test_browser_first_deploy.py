"""A new user's first deploy, in a real browser (Debian's chromium) against the real stack:
daphne, a Celery worker, beat, a host worker booting real HyperVMs (TCG), PostgreSQL, Redis and
the test registry standing in for the platform's embedded one (issue 13, "First deploy")."""

from __future__ import annotations

import re
import urllib.request

import pytest

from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost
from portal.services.apps import app_create, app_delete, app_scale
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import Membership
from tests.portal.test_browser_apps import (
    BOOT_WAIT_MS,
    assert_not_reloaded,
    db_wait,
    log_in,
    mark_loaded,
    record_chips,
    recorded_chips,
)
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.support.live_stack import free_port
from tests.support.oci_images import HTTPD_INDEX_HTML
from tests.support.registry import platform_allowlist_add
from tests.tenants.factories import TenantFactory, UserFactory

# daphne's access log: 127.0.0.1:40104 - - [05/Dec/2026:07:48:18] "GET /t/first/" 200 5120
ACCESS_LOG = re.compile(r'^\S+ - - \[[^]]+\] "(GET|HEAD|POST) ')
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def newcomer(live_stack, test_images):
    """Tenant first, owned by nina (a platform admin too, so the platform pages are hers to see),
    with no registry of its own: the Deploy form offers only the platform's embedded one."""
    user = UserFactory(username="nina", is_staff=True)
    tenant = TenantFactory(slug="first", name="First")
    Membership.objects.create(tenant=tenant, user=user, role=TenantRole.OWNER)
    return tenant


def delete_app(tenant, marathon_id: str) -> None:
    owner = Membership.objects.get(tenant=tenant, role=TenantRole.OWNER).user
    access = tenant_access_resolve(user=owner, slug=tenant.slug)
    app = App.objects.filter(tenant=tenant, marathon_id=marathon_id).first()
    if app is not None:
        app_delete(access=access, app=app, force=True)
        db_wait("the app is gone", lambda: not App.objects.filter(pk=app.pk).exists())


def test_a_first_deploy_with_the_forms_defaults_and_the_hints_image_reaches_healthy(
    live_stack, one_host, newcomer, registry, page
):
    log_in(page, live_stack.url, "nina")
    page.click("header nav >> text=Deploy")  # the way in a new user takes, not the demo button
    page.wait_for_url(re.compile(r".*/t/first/apps/deploy/$"))
    assert page.input_value("#id_registry") == "platform"
    hint = page.locator('[data-field="image"] small').inner_text()
    assert f"local ({registry.host_port}, the platform's, pull only)" in hint, hint
    example = re.search(r"e\.g\. (\S+?)[,.;)]?(\s|$)", hint).group(1)
    assert example == "demo/hello:latest", hint
    screenshot(page, "first-deploy-form")
    page.fill("#id_image", example)  # everything else as the form offers it
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/first/apps/\d+/$"))
    app = App.objects.get(tenant=newcomer)
    definition = app.current_version.definition["app"]
    assert definition["container"]["docker"]["image"] == f"{registry.host_port}/demo/hello:latest"

    healthy = page.locator('#instance-table tr[data-status="healthy"]').first
    healthy.wait_for(timeout=BOOT_WAIT_MS)
    screenshot(page, "first-deploy-healthy")
    # The demo web server prints nothing: the console says so instead of staying a blank box.
    page.locator("#console .console-note").filter(has_text="the app has printed nothing yet").wait_for()
    row = healthy.inner_text()  # read at once: the live page may swap the row later
    published = re.search(r"127\.0\.0\.1:\d+", row)
    assert published, row
    with urllib.request.urlopen(f"http://{published.group(0)}/", timeout=10) as response:  # what the link opens
        assert response.status == 200 and HTTPD_INDEX_HTML in response.read().decode()
    delete_app(newcomer, app.marathon_id)


@pytest.fixture
def fresh_page(chromium):
    """A page of a browser of its own: Chromium remembers an icon that failed to load for the
    whole browser, so after an earlier test it would not ask again."""
    browser = chromium.browser_type.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15000)
    yield page
    browser.close()


def test_no_main_page_answers_a_missing_resource(live_stack, newcomer, fresh_page):
    """Every response the browser got, as Playwright reports them and as the server logged them
    (Chromium fetches a page's icon outside the page, where Playwright does not see it)."""
    server_log = live_stack.log_dir / "web.log"
    log_start = server_log.stat().st_size
    page = fresh_page
    failed = []
    page.on("response", lambda response: response.status >= 400 and failed.append((response.status, response.url)))
    page.on("requestfailed", lambda request: failed.append((request.failure, request.url)))
    page.goto(live_stack.url + "/login/")
    page.wait_for_load_state("networkidle")
    log_in(page, live_stack.url, "nina")
    owner = Membership.objects.get(tenant=newcomer).user
    definition = parse_app_definition({"id": "/idle", "instances": 0, "container": {"docker": {"image": "x/y"}}})
    app = app_create(access=tenant_access_resolve(user=owner, slug="first"), definition=definition).app
    pages = [
        "/t/first/",
        "/t/first/apps/",
        "/t/first/apps/deploy/",
        "/t/first/apps/deploy/?mode=json",
        f"/t/first/apps/{app.pk}/",
        "/t/first/members/",
        "/t/first/registries/",
        "/account/tokens/",
        "/platform/tenants/",
        "/platform/hosts/",
        "/api/v1/docs/",
    ]
    for path in pages:
        response = page.goto(live_stack.url + path)
        assert response.status == 200, path
        page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # the icon is asked for after the load
    with open(server_log, "rb") as log:
        log.seek(log_start)
        logged = [line for line in log.read().decode(errors="replace").splitlines() if ACCESS_LOG.search(line)]
    assert logged, "the server logged no request"
    assert [line for line in logged if not re.search(r'" (200|302|304) ', line)] == []
    assert failed == []
    assert page.request.get(live_stack.url + "/favicon.ico").status == 200  # for clients that ask there anyway


def test_the_registry_select_stays_inside_its_column(live_stack, newcomer, page):
    log_in(page, live_stack.url, "nina")
    page.goto(live_stack.url + "/t/first/apps/deploy/")
    screenshot(page, "first-deploy-select")
    select = page.locator("#id_registry").bounding_box()
    column = page.locator('[data-field="registry"]').bounding_box()
    neighbour = page.locator('[data-field="image"]').bounding_box()
    assert column["x"] <= select["x"] and select["x"] + select["width"] <= column["x"] + column["width"] + 0.5
    if neighbour["y"] == column["y"]:  # side by side: the select stops before the next column starts
        assert select["x"] + select["width"] <= neighbour["x"]


def test_the_image_hint_follows_the_registry_chosen(live_stack, newcomer, registry, page):
    log_in(page, live_stack.url, "nina")
    page.goto(live_stack.url + "/t/first/apps/deploy/")
    hint = page.locator("#id_image_help")
    page.select_option("#id_registry", "")
    assert hint.inner_text().startswith("A full reference: registry host, repository and tag, e.g. ")
    assert f"{registry.host_port}/demo/hello:latest" in hint.inner_text()
    assert "Without a registry host it names an image on Docker Hub" in hint.inner_text()
    page.select_option("#id_registry", "platform")
    assert hint.inner_text().startswith(f"repository:tag in local ({registry.host_port}")


@pytest.fixture
def silent_registry(compute_hosts):
    """A loopback registry address the platform allows but where nothing answers (as an
    unreachable registry is for a pull), and host h1 restarted so it knows the allowlist."""
    host_port = f"127.0.0.1:{free_port()}"
    platform_allowlist_add(host_port)
    compute_hosts.kill_all_but("h1")
    if "h1" in compute_hosts.workers:  # started before the address was allowed
        compute_hosts.kill_machine("h1")
    worker = compute_hosts.start("h1")
    db_wait("host h1 registered", lambda: ComputeHost.objects.filter(name=worker.name).exists(), 60)
    return host_port


def test_a_pull_that_fails_shows_each_retrys_reason_on_the_instance_row(live_stack, newcomer, silent_registry, page):
    owner = Membership.objects.get(tenant=newcomer).user
    access = tenant_access_resolve(user=owner, slug="first")
    body = {
        "id": "/unreachable",
        "instances": 0,
        "cpus": 0.5,
        "mem": 128,
        "container": {"docker": {"image": f"{silent_registry}/demo/nope:latest"}},
        "portDefinitions": [],
    }
    app = app_create(access=access, definition=parse_app_definition(body)).app
    log_in(page, live_stack.url, "nina")
    page.goto(live_stack.url + f"/t/first/apps/{app.pk}/")
    mark_loaded(page)
    record_chips(page, "#instance-table tr[data-instance]", "data-instance", ".instance-note")
    # The page is open before the first pull (force: the empty start may still be going).
    app_scale(access=access, app=app, instances=1, force=True)

    note = page.locator('#instance-table tr[data-status="pulling"] .instance-note')
    first = note.filter(has_text="(attempt 1 of 4)")
    first.wait_for(timeout=60_000)
    assert page.input_value("#actions-form #id_instances") == "1"  # scaled elsewhere: the field follows
    instance_id = page.locator('#instance-table tr[data-status="pulling"]').get_attribute("data-instance")
    text = first.inner_text()
    assert text.startswith(f"pull failed: cannot reach registry {silent_registry} (attempt 1 of 4) · next try in ")
    assert re.search(r"next try in \d+ s$", text), text
    screenshot(page, "first-deploy-retry-reason")
    note.filter(has_text="(attempt 2 of 4)").wait_for(timeout=60_000)
    # After the last attempt the instance fails with the reason (the app's backoff relaunches it).
    failed = page.locator(f'#ended-table tr[data-instance="{instance_id}"][data-status="failed"] .failure-reason')
    failed.wait_for(timeout=60_000)
    assert f"cannot reach registry {silent_registry}" in failed.inner_text()
    shown = recorded_chips(page)[instance_id]
    attempts = [int(n) for n in re.findall(r"\(attempt (\d) of 4\)", " ".join(shown))]
    assert attempts == sorted(attempts) and {1, 2, 3} <= set(attempts), shown  # each retry, in order
    assert_not_reloaded(page)
    delete_app(newcomer, "/unreachable")
