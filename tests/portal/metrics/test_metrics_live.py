"""/metrics and the usage chart against the real stack: daphne, the portal's Celery worker, beat
and a host worker booting real HyperVMs (TCG), its usage sampler reading libvirt's domain stats.
The scrape is parsed with prometheus-client's own parser; its figures follow an app scaled from
one instance to two. In chromium, the app page's chart shows the instance's CPU and memory, and
its figures move as new samples arrive."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from portal.choices import INSTANCE_UP
from portal.marathon import parse_app_definition
from portal.models import Instance
from portal.services.apps import app_create, app_scale
from tests.portal.test_consumers import session_cookie
from tests.portal.test_pipeline import access, wait_until  # noqa: F401 (fixtures)
from tests.support.browser import screenshot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
MIB = 1024 * 1024
# Bursts of shell arithmetic between sleeps: a CPU figure that moves from sample to sample.
BUSY_NOW_AND_THEN = "while true; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 1; done"


def busy_app(test_images, app_id: str, instances: int) -> dict:
    return {
        "id": app_id,
        "instances": instances,
        "cpus": 0.5,
        "mem": 128,
        "cmd": BUSY_NOW_AND_THEN,
        "container": {"docker": {"image": test_images["httpd"].reference}},
        "portDefinitions": [],  # no host port: other sessions on this machine share the range
    }


def scrape(live_stack, cookie: bytes) -> dict[str, dict[tuple, float]]:
    request = urllib.request.Request(live_stack.url + "/metrics", headers={"Cookie": cookie.decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def of(figures, name: str, **wanted) -> dict[tuple, float]:
    """The samples of ``name`` whose labels include ``wanted``."""
    return {key: value for key, value in figures.get(name, {}).items() if set(wanted.items()) <= set(key)}


def up_and_measured(live_stack, cookie, app, count: int):
    """A scrape once ``count`` instances of the app are up and each has a usage sample."""

    def ready():
        up = list(Instance.objects.filter(app=app, status__in=INSTANCE_UP).values_list("pk", flat=True))
        if len(up) != count:
            return None
        figures = scrape(live_stack, cookie)
        measured = of(figures, "hypervm_instance_memory_used_bytes", app=app.marathon_id)
        return figures if {dict(key)["instance"] for key in measured} == {str(pk) for pk in up} else None

    return wait_until(f"{count} instance(s) up and measured", ready, 150, 1.0)


def test_the_scrape_follows_an_app_scaled_from_one_instance_to_two(
    live_stack,
    access,  # noqa: F811
    one_host,  # noqa: F811
    test_images,
    platform_admin,
):
    cookie = session_cookie(platform_admin)
    app = app_create(access=access, definition=parse_app_definition(busy_app(test_images, "/metered", 1))).app
    host, tenant = one_host.name, access.tenant.slug

    one = up_and_measured(live_stack, cookie, app, 1)
    app_scale(access=access, app=app, instances=2)
    two = up_and_measured(live_stack, cookie, app, 2)

    def running(figures) -> float:
        return sum(of(figures, "hypervm_app_instances", app="/metered", tenant=tenant, status="running").values())

    assert (running(one), running(two)) == (1, 2)
    assert [f["hypervm_host_vms"][(("host", host),)] for f in (one, two)] == [1, 2]
    assert [f["hypervm_host_cpu_allocated_vcpus"][(("host", host),)] for f in (one, two)] == [1, 2]
    booted = "hypervm_app_boot_phase_duration_seconds_count"
    assert [sum(of(f, booted, app="/metered", phase="booting").values()) for f in (one, two)] == [1, 2]
    for figures in (one, two):
        memory = of(figures, "hypervm_instance_memory_used_bytes", app="/metered")
        assert all(16 * MIB < used <= 128 * MIB + 512 * MIB for used in memory.values())  # QEMU's RSS
        assert figures["hypervm_host_memory_used_bytes"][(("host", host),)] == sum(memory.values())
        assert 0 <= figures["hypervm_host_heartbeat_age_seconds"][(("host", host),)] < 15
    queue = of(two, "hypervm_celery_queue_length", queue=f"host.{host}")
    assert list(queue.values()) == [0]  # the host's queue exists and is drained


@pytest.mark.browser
def test_the_app_page_charts_each_instance_s_cpu_and_memory(
    live_stack,
    page,
    access,  # noqa: F811
    one_host,  # noqa: F811
    test_images,
):
    app = app_create(access=access, definition=parse_app_definition(busy_app(test_images, "/charted", 1))).app
    instance = wait_until("the instance runs", lambda: Instance.objects.filter(app=app, status__in=INSTANCE_UP).first())
    session = session_cookie(access.actor).decode().partition("=")[2]
    page.context.add_cookies([{"name": "sessionid", "value": session, "url": live_stack.url}])

    page.goto(f"{live_stack.url}/t/{access.tenant.slug}/apps/{app.pk}/")
    row = page.locator(f'#usage-table tr[data-usage-for="{instance.pk}"]')
    row.wait_for(timeout=30000)
    shown = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len({figures for figures, _ in shown}) < 3:
        page.wait_for_function(
            "([id, n]) => Number(document.querySelector(`tr[data-usage-for='${id}']`).dataset.samples) > n",
            arg=[str(instance.pk), len(shown)],
            timeout=30000,
        )
        shown.append(
            (
                (row.get_attribute("data-cpu-percent"), row.get_attribute("data-memory-mib")),
                row.locator("svg.sparkline.cpu polyline").get_attribute("points"),
            )
        )
    screenshot(page, "usage-chart")

    assert len({figures for figures, _ in shown}) >= 3  # the figures move as samples arrive
    cpu, memory = (float(value) for value in shown[-1][0])
    assert 0 <= cpu <= 150 and 16 < memory < 1024
    assert len(shown[-1][1].split()) >= 3  # one point per sample
    assert "%" in row.locator("td").nth(2).inner_text() and "MiB" in row.locator("td").nth(4).inner_text()
