"""Issue 9, the host side's stop path, health probes and instance files, driven as tenants would
drive them: the Marathon API of the live web server with a tenant's token, a real host worker
booting real HyperVMs (TCG), Celery beat reconciling.

- A stop never holds a host worker slot for the tenant's grace period (row 4): stop tasks return
  at once, another tenant's app boots meanwhile, and the host's reconcile ends each stop once the
  app exited or its deadline passed.
- One VM whose folder holds garbage records does not stop the host's reconcile of the others.
- Health probes reach only the instance's own published ports and never follow a redirect (row 2).
- Instance folders, config disks and guest logs are not readable by other users of the host.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings
from django.db import close_old_connections

from portal.choices import InstanceStatus
from portal.models import AppVersion, ComputeHost, Event, Instance
from tests.portal.test_pipeline import wait_until
from tests.support.tenant_access import owner_access_with_registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
UP = (InstanceStatus.RUNNING, InstanceStatus.HEALTHY)
# Ignores SIGTERM (an ignored signal stays ignored in the children it starts): only a SIGKILL or
# the destroy of its VM ends it.
STUBBORN_CMD = "trap '' TERM; while true; do sleep 1; done"
STOP_TASK_DONE = re.compile(rb"Task vmworker\.stop_instance\[[^\]]+\] succeeded in ([0-9.]+)s")


class TenantClient:
    """The Marathon API of the live stack with one tenant's token."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"token={self.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def deploy(self, definition: dict) -> None:
        status, answer = self.request("POST", "/v2/apps", definition)
        assert status == 201, (status, answer)

    def delete(self, app_id: str) -> None:
        status, answer = self.request("DELETE", f"/v2/apps{app_id}")
        assert status == 200, (status, answer)


def tenant_client(live_stack, tenant, member_of, registry) -> TenantClient:
    from tenants.services import api_token_create

    access = owner_access_with_registry(tenant, member_of, registry)
    _, key = api_token_create(user=access.actor, name="security", tenant=tenant)
    return TenantClient(live_stack.url, key)


@pytest.fixture
def one_host(compute_hosts):
    """The session's host worker h1, alone (the stop test counts its stop tasks in its log)."""
    compute_hosts.kill_all_but("h1")
    worker = compute_hosts.start("h1")
    wait_until("host h1 registered", lambda: ComputeHost.objects.filter(name=worker.name).exists(), 60)
    return worker


@pytest.fixture
def first_tenant(live_stack, tenant, member_of, registry, test_images) -> TenantClient:
    return tenant_client(live_stack, tenant, member_of, registry)


@pytest.fixture
def second_tenant(live_stack, other_tenant, member_of, registry, test_images) -> TenantClient:
    return tenant_client(live_stack, other_tenant, member_of, registry)


def instances_of(app_id: str) -> list[Instance]:
    close_old_connections()
    return list(Instance.objects.filter(app__marathon_id=app_id).order_by("created_at"))


def up_instance(app_id: str) -> Instance:
    """The app's instance that runs (an earlier one may have failed: e.g. its host port was
    taken by another stack on this machine)."""
    return next(i for i in instances_of(app_id) if i.status in UP)


def wait_up(app_id: str, count: int, timeout_s: float = 150) -> list[Instance]:
    return wait_until(
        f"{count} instances of {app_id} up",
        lambda: (found := [i for i in instances_of(app_id) if i.status in UP]) and len(found) == count and found,
        timeout_s,
    )


def stubborn_app(test_images, *, app_id: str, instances: int, grace_s: int) -> dict:
    return {
        "id": app_id,
        "instances": instances,
        "cpus": 0.1,
        "mem": 128,
        "cmd": STUBBORN_CMD,
        "container": {"docker": {"image": test_images["sigterm"].reference}},
        "portDefinitions": [],
        "taskKillGracePeriodSeconds": grace_s,
    }


def plain_app(test_images, *, app_id: str) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 128,
        "container": {"docker": {"image": test_images["sigterm"].reference}},
        "portDefinitions": [],
    }


def http_app(test_images, *, app_id: str, check: dict, **extra) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 128,
        "container": {
            "docker": {"image": test_images["httpd"].reference},
            "portMappings": [{"containerPort": 8080, "hostPort": 0}],
        },
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [
            {"portIndex": 0, "intervalSeconds": 1, "timeoutSeconds": 2, "gracePeriodSeconds": 60, **check}
        ],
        **extra,
    }


def test_stops_of_apps_ignoring_sigterm_hold_no_worker_slot_and_end_at_their_deadline(
    first_tenant, second_tenant, one_host, test_images
):
    # More stubborn instances than the host worker's concurrency (3), each with the longest grace
    # the platform allows.
    longest_grace_s = settings.APP_DEFINITION_LIMITS["max_task_kill_grace_period_s"]
    first_tenant.deploy(stubborn_app(test_images, app_id="/stubborn", instances=4, grace_s=longest_grace_s))
    first_tenant.deploy(stubborn_app(test_images, app_id="/quick", instances=1, grace_s=5))
    wait_up("/stubborn", 4)
    quick_id = str(wait_up("/quick", 1)[0].pk)
    log_start = one_host.log_path.stat().st_size

    first_tenant.delete("/stubborn")
    first_tenant.delete("/quick")
    asked = time.monotonic()
    second_tenant.deploy(plain_app(test_images, app_id="/neighbour"))

    wait_up("/neighbour", 1, timeout_s=60)
    neighbour_s = time.monotonic() - asked
    # The host's stop tasks returned at once: no worker slot held for a grace the tenant chose.
    stop_task_s = wait_until(
        "the five stop tasks ran",
        lambda: (
            len(found := [float(s) for s in STOP_TASK_DONE.findall(one_host.log_path.read_bytes()[log_start:])]) >= 5
            and found
        ),
        60,
    )
    assert max(stop_task_s) < 5, f"stop tasks held a host worker slot for {stop_task_s} s"
    # The tenant's grace is honoured all the same: the stubborn instances are still stopping.
    assert {i.status for i in instances_of("/stubborn")} == {InstanceStatus.STOPPING}, neighbour_s

    # Its app is deleted with it once it stopped: its end is read from its status event.
    quick = wait_until(
        "the 5 s grace passed and the reconcile ended the stop",
        lambda: Event.objects.filter(data__instanceId=quick_id, data__status=InstanceStatus.STOPPED).first(),
        60,
    ).data
    phase_times = {status: datetime.fromisoformat(at) for status, at in quick["phaseTimes"].items()}
    waited_s = (phase_times[InstanceStatus.STOPPED] - phase_times[InstanceStatus.STOPPING]).total_seconds()
    assert 5 <= waited_s < 40, waited_s
    assert quick["taskStatus"] == "TASK_KILLED"  # ignored SIGTERM: SIGKILLed at its grace (or destroyed)


def test_a_vm_with_garbage_records_does_not_stop_the_reconcile_of_its_neighbour(
    first_tenant, second_tenant, one_host, test_images
):
    first_tenant.deploy(plain_app(test_images, app_id="/garbage"))
    broken = wait_up("/garbage", 1)[0]
    folder = one_host.state_dir / "instances" / str(broken.pk)
    with open(folder / "guest.log", "ab") as log:  # what a hostile guest can write on its log port
        log.write(b"exit not-a-number\noom \xff\xfe\nstarted x\n" + os.urandom(512) + b"\n")
    (folder / "instance.json").write_bytes(b'{"instance_id": ' + os.urandom(64))  # a torn record

    second_tenant.deploy(http_app(test_images, app_id="/beside", check={"protocol": "HTTP", "path": "/"}))

    beside = wait_until(
        "the neighbour's health checks ran",
        lambda: next((i for i in instances_of("/beside") if i.status == InstanceStatus.HEALTHY), None),
        90,
    )
    assert beside.health["alive"] is True


@pytest.fixture
def platform_service():
    """A loopback HTTP service of the platform (not any instance's port): records every
    connection and request that reaches it."""
    reached: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            reached.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"platform secret")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def verify_request(self, request, client_address) -> bool:
            reached.append("connection")  # a bare TCP connect counts too
            return True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], reached
    server.shutdown()
    server.server_close()


def rewrite_check(app_id: str, **fields) -> tuple[int, datetime]:
    """Writes the stored definition's health check directly (an old row from before the API's
    policy), and lets the next round probe at once; returns the instance's pk and when."""
    from django.utils import timezone

    instance = up_instance(app_id)
    version = AppVersion.objects.get(pk=instance.version_id)
    version.definition["app"]["health_checks"][0].update(fields)
    version.save(update_fields=["definition"])
    Instance.objects.filter(pk=instance.pk).update(health={})
    return instance.pk, timezone.now()


def wait_checked(instance_pk: int, *, after: datetime) -> dict:
    """The instance's health record once a round claimed after ``after`` has been judged. Read by pk, not
    as "the app's instance that is up": a failing check may have had it replaced by the time a
    loaded machine polls again (the round's record stays on the row it judged)."""
    return wait_until(
        f"a health round of instance {instance_pk}",
        lambda: (
            (health := Instance.objects.get(pk=instance_pk).health)
            and "lastCheckAt" in health
            and datetime.fromisoformat(health["lastCheckAt"]) > after
            # judged: the portal claims a round (lastCheckAt) before the probe runs, and stamps
            # the round's result with that time
            and health["lastCheckAt"] in (health.get("lastFailure"), health.get("lastSuccess"))
            and health
        ),
        60,
    )


@pytest.mark.parametrize("protocol", ["TCP", "HTTP"])
def test_probes_reach_only_the_instances_own_ports(first_tenant, one_host, test_images, platform_service, protocol):
    port, reached = platform_service
    app_id = f"/scanner-{protocol.lower()}"
    first_tenant.deploy(http_app(test_images, app_id=app_id, check={"protocol": "TCP"}))
    wait_up(app_id, 1)

    scanned, rewritten_at = rewrite_check(app_id, port=port, port_index=None, protocol=protocol, path="/")

    scanner = wait_checked(scanned, after=rewritten_at)
    assert reached == [], f"the {protocol} probe reached port {port}, not the instance's own"
    assert scanner["alive"] is False and "not one of the instance's" in scanner["lastFailureCause"], scanner


def test_http_probes_follow_no_redirect(first_tenant, one_host, test_images, platform_service):
    port, reached = platform_service
    # Its app answers every request to /cgi-bin/go with a redirect to the platform's service.
    answer = f"HTTP/1.0 302 Found\\r\\nLocation: http://127.0.0.1:{port}/stolen\\r\\nContent-Length: 0\\r\\n\\r\\n"
    redirect = f"printf '{answer}'"
    first_tenant.deploy(
        http_app(
            test_images,
            app_id="/redirector",
            check={"protocol": "HTTP", "path": "/cgi-bin/go"},
            cmd='/bin/busybox mkdir -p /tmp/w/cgi-bin && echo "$CGI" > /tmp/w/cgi-bin/go'
            " && /bin/busybox chmod 755 /tmp/w/cgi-bin/go && exec /bin/httpd -f -p 8080 -h /tmp/w",
            env={"CGI": f"#!/bin/sh\n{redirect}\n"},
        )
    )
    wait_up("/redirector", 1)

    # Until a probe went to the platform's service, or one judged the answer (its app may need a
    # moment to bind after it started).
    redirector = wait_until(
        "a probe of the redirector's answer",
        lambda: reached or ((health := up_instance("/redirector").health).get("alive") and health),
        60,
    )

    assert reached == [], f"the HTTP probe followed the redirect to port {port}: {reached}"
    assert redirector["alive"] is True  # a 3xx is a result, healthy as Marathon judges it


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_instance_folders_and_files_are_not_readable_by_other_users(first_tenant, one_host, test_images):
    first_tenant.deploy(http_app(test_images, app_id="/private", check={"protocol": "HTTP", "path": "/"}))
    served = wait_until(
        "healthy",
        lambda: next((i for i in instances_of("/private") if i.status == InstanceStatus.HEALTHY), None),
    )
    page = urllib.request.urlopen(f"http://127.0.0.1:{served.host_ports[0]}/", timeout=5).read()
    assert b"Hello from a HyperVM" in page  # the VM boots and serves with the tighter modes
    state_dir = one_host.state_dir
    folder = state_dir / "instances" / str(served.pk)

    fs_image = next((state_dir / "images").rglob("*.erofs"), None) or next((state_dir / "images").rglob("*.ext4"))
    as_nobody = [
        subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, timeout=10)
        for argv in (
            ["cat", str(folder / "guest.log")],
            ["cat", str(folder / "config.img")],
            ["ls", str(folder)],
            ["ls", str(state_dir / "instances")],
            ["cat", str(fs_image)],  # a tenant's image contents
        )
    ]
    assert [run.returncode != 0 for run in as_nobody] == [True] * 5, [run.stdout[:100] for run in as_nobody]
    # Nothing of a tenant is reachable for other users: the folders on the way give them nothing,
    # and the instance's own files are not theirs to read either.
    chain = [state_dir, state_dir / "instances", folder, state_dir / "images"]
    assert {str(path): oct(mode_of(path)) for path in chain if mode_of(path) & 0o007} == {}
    files = {path.name: mode_of(path) for path in folder.iterdir()}
    assert {name: oct(mode) for name, mode in files.items() if mode & 0o007} == {}
    assert files["guest.log"] & 0o077 in (0, 0o040) and files["config.img"] & 0o077 in (0, 0o040)
