"""Health rounds of the host worker (vmworker.tasks) on real PostgreSQL, against real HTTP
servers on 127.0.0.1: the portal claims the probes due, the host runs them at once in a bounded
pool, and a round gives its queue slot back when its deadline passes while slow probes finish
later and still report their result, which the portal judges."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, Instance
from portal.services.health import health_probes_claim
from portal.services.host_reports import instance_report_apply
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import TenantFactory
from vmworker import tasks

pytestmark = pytest.mark.django_db(transaction=True)
PROBES = 5


def app_with_http_check(tenant) -> App:
    body = {
        "id": "/probed",
        "instances": PROBES,  # at its target: a reconciler of the session's live stack leaves it alone
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 128,
        "container": {"docker": {"image": "demo/h:1"}, "portMappings": [{"containerPort": 80, "hostPort": 0}]},
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "intervalSeconds": 1, "timeoutSeconds": 60}],
    }
    app = App.objects.create(tenant=tenant, marathon_id="/probed")
    version = AppVersion.objects.create(app=app, version="v1", definition=parse_app_definition(body).to_stored())
    App.objects.filter(pk=app.pk).update(current_version=version)
    return App.objects.get(pk=app.pk)


@pytest.fixture
def slow_server():
    """Answers 200 only once released; counts the requests that arrived."""
    release = threading.Event()
    arrived: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            arrived.append(self.path)
            release.wait(timeout=60)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], release, arrived
    release.set()
    server.shutdown()
    server.server_close()


def test_a_health_round_probes_at_once_returns_at_its_deadline_and_slow_probes_still_record(
    monkeypatch, tmp_path, slow_server
):
    port, release, arrived = slow_server
    monkeypatch.setenv("HYPERVM_STATE_DIR", str(tmp_path / "state"))
    tasks.runtime.cache_clear()
    monkeypatch.setattr(tasks, "HEALTH_ROUND_S", 0.5)
    monkeypatch.setattr(tasks, "host_name", lambda: "probe-host")
    monkeypatch.setattr(tasks, "send_report", portal_applies)
    host = compute_host_create("probe-host")
    app = app_with_http_check(TenantFactory())
    running_since = {InstanceStatus.RUNNING: timezone.now().isoformat()}
    instances = [
        Instance.objects.create(
            tenant=app.tenant,
            app=app,
            version=app.current_version,
            vcpus=1,
            memory_mib=128,
            status=InstanceStatus.RUNNING,
            host=host,
            host_ports=[port],
            phase_times=running_since,
        )
        for _ in range(PROBES)
    ]
    probes = health_probes_claim(host_name="probe-host")
    assert health_probes_claim(host_name="probe-host") == []  # claimed: the next round's are not due

    tasks._health_round(probes)  # returns at its deadline, every probe still waiting for its answer

    assert wait_for(lambda: len(arrived) == PROBES)  # all in flight at once, none answered yet
    assert Instance.objects.filter(app=app, status=InstanceStatus.HEALTHY).count() == 0
    tasks._health_round(probes)  # probes in flight are not started again
    assert len(arrived) == PROBES
    release.set()
    healthy = wait_for(
        lambda: (
            Instance.objects.filter(pk__in=[i.pk for i in instances], status=InstanceStatus.HEALTHY).count() == PROBES
        )
    )
    assert healthy
    tasks.runtime.cache_clear()


def portal_applies(report: dict) -> None:
    """The host's report, applied as the portal's queue would (from the probe's thread)."""
    try:
        instance_report_apply(report=report)
    finally:
        connection.close()  # the probe thread's own connection


def wait_for(predicate, attempts: int = 300) -> bool:
    for _ in range(attempts):
        close_old_connections()
        if predicate():
            return True
        threading.Event().wait(0.1)
    return False
