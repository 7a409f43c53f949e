"""Persistent volumes in a real browser against the real stack (daphne, Celery, a host worker
booting real HyperVMs): the deploy form takes a volume, the app page lists it with its size,
the host blocks it uses, its host and instance, live; the tenant overview shows the disk it holds
against the quota; deleting the app takes it away."""

from __future__ import annotations

import re

import pytest

from portal.models import App, Volume
from tests.portal.test_browser_apps import acme, db_wait, log_in  # noqa: F401 (fixtures)
from tests.portal.test_volumes_live import COUNTER_SERVE
from tests.support.browser import screenshot
from tests.support.oci_images import HTTPD_PORT

pytestmark = [pytest.mark.browser, pytest.mark.vm, pytest.mark.django_db(transaction=True)]
BOOT_WAIT_MS = 240_000


def test_a_volume_deployed_from_the_form_is_listed_on_the_app_page_and_in_the_disk_use(
    live_stack,
    one_host,  # noqa: F811
    acme,  # noqa: F811
    page,
):
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, live_stack.url, "alice")
    page.goto(live_stack.url + "/t/acme/apps/")
    page.click("#deploy-demo")
    page.wait_for_url(re.compile(r".*/apps/deploy/\?registry=.*"))
    page.fill("#id_app_id", "/counter")
    page.fill("#id_cmd", COUNTER_SERVE)
    page.fill("#id_ports", str(HTTPD_PORT))
    page.select_option("#id_health_check", "")
    page.fill("#id_volumes", "data:48")
    screenshot(page, "deploy-form-volume")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/acme/apps/\d+/$"))
    app = App.objects.get(tenant=acme, marathon_id="/counter")
    (volume,) = Volume.objects.filter(app=app)

    row = page.locator(f'#volume-table tr[data-volume="{volume.pk}"]')
    row.wait_for(timeout=30_000)
    assert "/mnt/mesos/sandbox/data" in row.inner_text() and "48 MiB" in row.inner_text()
    page.locator('#instance-table tr[data-status="running"]').wait_for(timeout=BOOT_WAIT_MS)
    page.reload()
    row = page.locator(f'#volume-table tr[data-volume="{volume.pk}"]')
    text = row.inner_text()
    assert one_host.name in text and "in use" in text
    assert re.search(r"\d+(\.\d+)?\s*(bytes|KB|MB)", text), text  # the host blocks it holds
    screenshot(page, "app-page-volume")

    page.goto(live_stack.url + "/t/acme/")
    assert "48 MiB persistent volumes" in page.locator("#disk-breakdown").inner_text()
    screenshot(page, "overview-disk-use")

    page.goto(live_stack.url + f"/t/acme/apps/{app.pk}/")
    page.click("button[value=delete]")
    page.wait_for_url(re.compile(r".*/t/acme/apps/$"))
    db_wait("the volume destroyed", lambda: not Volume.objects.filter(pk=volume.pk).exists(), 180)
    page.goto(live_stack.url + "/t/acme/")
    assert page.locator("#disk-breakdown").count() == 0
