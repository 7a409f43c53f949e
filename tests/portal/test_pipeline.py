"""The deploy pipeline against the real stack: PostgreSQL, Redis, the web server, a portal
Celery worker, Celery beat (the reconciler) and host workers booting real HyperVMs (TCG)."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from datetime import datetime

import pytest
from django.db import close_old_connections

from portal.choices import INSTANCE_ACTIVE, DeploymentStatus, HostState, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Deployment, Event, Instance
from portal.selectors import app_get
from portal.services.apps import app_create, app_delete
from tenants.selectors import quota_usage
from tenants.services import registry_create
from tests.support.oci_images import SIGTERM, build_and_push
from tests.support.registry import platform_allowlist_add, start_registry, stop_registry
from tests.support.tenant_access import owner_access_with_registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
WAIT_S = 150


def wait_until(what: str, predicate, timeout_s: float = WAIT_S, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        close_old_connections()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            rows = list(Instance.objects.values_list("app__marathon_id", "status", "host__name", "failure_reason"))
            raise AssertionError(f"timed out waiting for {what}; instances: {rows}")
        time.sleep(poll_s)


def active(app_marathon_id: str) -> list[Instance]:
    return list(
        Instance.objects.filter(app__marathon_id=app_marathon_id, status__in=INSTANCE_ACTIVE)
        .select_related("host")
        .order_by("created_at")
    )


def healthy_over_time(app_marathon_id: str) -> tuple[list[int], list[tuple[str, str]]]:
    """How many of the app's instances were healthy after each status change, from the event
    log (every change writes a status_update_event in its own transaction, with the time it
    happened under the instance's row lock): exact, nothing sampled. Also the changes, in order."""
    changes = sorted(
        (datetime.fromisoformat(data["phaseTimes"][data["status"]]), data["instanceId"], data["status"])
        for data in Event.objects.filter(kind="status_update_event", app__marathon_id=app_marathon_id).values_list(
            "data", flat=True
        )
    )
    status_of: dict[str, str] = {}
    counts = []
    for _, instance_id, status in changes:
        status_of[instance_id] = status
        counts.append(sum(s == InstanceStatus.HEALTHY for s in status_of.values()))
    return counts, [(instance_id, status) for _, instance_id, status in changes]


def deployment_done(deployment) -> bool:
    return Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.SUCCEEDED


@pytest.fixture
def access(tenant, member_of, registry, test_images):
    return owner_access_with_registry(tenant, member_of, registry)


def http_app(test_images, *, app_id="/web", instances=2, **extra) -> dict:
    return {
        "id": app_id,
        "instances": instances,
        "cpus": 0.5,
        "mem": 128,
        "container": {
            "docker": {"image": test_images["httpd"].reference},
            "portMappings": [{"containerPort": 8080, "hostPort": 0}],
        },
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [
            {
                "protocol": "HTTP",
                "path": "/",
                "portIndex": 0,
                "intervalSeconds": 1,
                "timeoutSeconds": 2,
                "gracePeriodSeconds": 60,
                "maxConsecutiveFailures": 3,
            }
        ],
        **extra,
    }


@pytest.fixture
def marathon(live_stack, access):
    """The real marathon-python client, with a token pinned to the test tenant."""
    import collections
    import collections.abc

    collections.Iterable = collections.abc.Iterable  # API-NOTES pitfall 5 (Python >= 3.10)
    from marathon import MarathonClient

    from tenants.services import api_token_create

    _, key = api_token_create(user=access.actor, name="marathon", tenant=access.tenant)
    return MarathonClient(live_stack.url, auth_token=key, timeout=15)


def test_marathon_client_deploys_rolls_scales_and_deletes(marathon, access, one_host, test_images):
    from marathon.models import MarathonApp

    marathon.create_app("/web", MarathonApp.from_json(http_app(test_images)))
    wait_until(
        "2 healthy instances",
        lambda: (
            len(marathon.get_app("/web").tasks) == 2
            and marathon.get_app("/web").tasks_healthy == 2
            and not marathon.list_deployments()
        ),
    )
    for task in marathon.list_tasks("/web"):
        assert task.host == one_host.name and task.state == "TASK_RUNNING"
        page = urllib.request.urlopen(f"http://127.0.0.1:{task.ports[0]}/", timeout=5).read()
        assert b"Hello from a HyperVM" in page
    for instance in active("/web"):
        assert set(instance.timings_s) >= {"define", "boot_to_init", "init_to_exec"}

    app = marathon.get_app("/web")
    app.env = {"COLOR": "blue"}
    marathon.update_app("/web", app)
    wait_until("the rolling update finished", lambda: not marathon.list_deployments())
    counts, changes = healthy_over_time("/web")
    reached = {status: {i for i, s in changes if s == status} for status in ("healthy", "stopping", "stopped")}
    # The record holds the whole update: 2 old and 2 new instances healthy, the 2 old stopped...
    assert [len(reached[status]) for status in ("healthy", "stopping", "stopped")] == [4, 2, 2], changes
    # ...and from the first moment 2 were healthy, never fewer (minimumHealthCapacity 1, 2 instances).
    assert min(counts[counts.index(2) :]) == 2
    current = app_get(tenant=access.tenant, marathon_id="/web").current_version_id
    assert {i.version_id for i in active("/web")} == {current}
    assert {i.app.marathon_id for i in active("/web")} == {"/web"}
    assert all(task.version == marathon.get_app("/web").version for task in marathon.list_tasks("/web"))

    marathon.scale_app("/web", instances=3)
    wait_until("3 healthy", lambda: not marathon.list_deployments() and marathon.get_app("/web").tasks_healthy == 3)
    marathon.scale_app("/web", instances=1)
    wait_until("1 left", lambda: not marathon.list_deployments() and len(marathon.list_tasks("/web")) == 1)

    marathon.delete_app("/web")
    wait_until("app gone", lambda: not App.objects.filter(marathon_id="/web").exists())
    assert all(value == 0 for value in quota_usage(tenant=access.tenant).values())
    from vmworker.runtime import HyperVMRuntime, RuntimeSettings

    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    assert [s for s in runtime.list_instances() if s.state in ("running", "booting")] == []


def test_a_killed_vm_is_marked_and_replaced_with_backoff(access, one_host, test_images):
    definition = parse_app_definition(http_app(test_images, app_id="/crashy", instances=1, backoffSeconds=2))
    deployment = app_create(access=access, definition=definition)
    wait_until("healthy", lambda: deployment_done(deployment))
    victim = active("/crashy")[0]
    from vmworker.runtime import HyperVMRuntime, RuntimeSettings

    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    pid = runtime.host.lookup(str(victim.pk)).qemu_pid()
    os.kill(pid, signal.SIGKILL)
    lost = wait_until(
        "the reconciler marks it", lambda: Instance.objects.filter(pk=victim.pk, status=InstanceStatus.LOST).first(), 60
    )
    assert "disappeared" in lost.failure_reason
    app = App.objects.get(marathon_id="/crashy")
    assert app.launch_failures == 1 and app.next_launch_at is not None
    replacement = wait_until(
        "a healthy replacement",
        lambda: next((i for i in active("/crashy") if i.pk != victim.pk and i.status == InstanceStatus.HEALTHY), None),
    )
    assert replacement.created_at >= app.next_launch_at - __import__("datetime").timedelta(milliseconds=50)


def test_instances_of_a_dead_host_are_rescheduled(access, compute_hosts, test_images):
    compute_hosts.kill_all_but("a", "b")
    first, second = compute_hosts.start("a"), compute_hosts.start("b")
    wait_until(
        "two hosts",
        lambda: ComputeHost.objects.filter(name__in=[first.name, second.name], state=HostState.UP).count() == 2,
        60,
    )
    wait_until(
        "earlier hosts down",
        lambda: not ComputeHost.objects.exclude(name__in=[first.name, second.name]).filter(state=HostState.UP).exists(),
        60,
    )
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/spread", instances=2))
    )
    wait_until("healthy", lambda: deployment_done(deployment))
    assert {i.host.name for i in active("/spread")} == {first.name, second.name}  # the weigher spreads them
    doomed = next(i for i in active("/spread") if i.host.name == first.name)

    compute_hosts.kill_machine("a")

    lost = wait_until("lost", lambda: Instance.objects.filter(pk=doomed.pk, status=InstanceStatus.LOST).first(), 60)
    assert "stopped heartbeating" in lost.failure_reason
    assert ComputeHost.objects.get(name=first.name).state == HostState.DOWN
    wait_until(
        "rescheduled on the live host",
        lambda: (
            len(active("/spread")) == 2
            and all(i.status == InstanceStatus.HEALTHY and i.host.name == second.name for i in active("/spread"))
        ),
    )
    app_delete(access=access, app=app_get(tenant=access.tenant, marathon_id="/spread"))
    wait_until("app gone", lambda: not App.objects.filter(marathon_id="/spread").exists())


def command_app(test_images, *, app_id: str, command: str, max_failures: int) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "container": {"docker": {"image": test_images["sigterm"].reference}},
        "portDefinitions": [],  # no host port: nothing to collide with other stacks on this machine
        "env": {"CHECK_TOKEN": "expected"},
        "healthChecks": [
            {
                "protocol": "COMMAND",
                "command": {"value": command},
                "intervalSeconds": 1,
                "timeoutSeconds": 5,
                "gracePeriodSeconds": 0,
                "maxConsecutiveFailures": max_failures,
            }
        ],
    }


def test_command_health_checks_run_inside_the_vm(access, one_host, test_images):
    good = app_create(
        access=access,
        definition=parse_app_definition(
            command_app(test_images, app_id="/cmd-good", command='test "$CHECK_TOKEN" = expected', max_failures=3)
        ),
    )
    app_create(
        access=access,
        definition=parse_app_definition(
            command_app(test_images, app_id="/cmd-bad", command="test -e /no/such/file", max_failures=0)
        ),
    )

    wait_until("the passing check makes it healthy", lambda: deployment_done(good))
    healthy = active("/cmd-good")[0]
    assert healthy.status == InstanceStatus.HEALTHY and healthy.health["alive"] is True
    unhealthy = wait_until(
        "the failing check makes it unhealthy",
        lambda: Instance.objects.filter(app__marathon_id="/cmd-bad", status=InstanceStatus.UNHEALTHY).first(),
    )
    assert unhealthy.health["lastFailureCause"] == "command exited with code 1"
    assert unhealthy.health["consecutiveFailures"] >= 1

    for marathon_id in ("/cmd-good", "/cmd-bad"):  # /cmd-bad's deployment still waits for health
        app_delete(access=access, app=app_get(tenant=access.tenant, marathon_id=marathon_id), force=True)
    wait_until("apps gone", lambda: not App.objects.filter(marathon_id__in=["/cmd-good", "/cmd-bad"]).exists())


@pytest.fixture
def registry_down_at_first(registry, oci_image_cache_dir, tmp_path_factory, compute_hosts, one_host):
    """A second real registry holding the sigterm image, then stopped with its files kept:
    ``start()`` brings it back on the same port. The platform allowlists it, so the host worker
    starts again to know it (it checks an image's registry before it pulls)."""
    work_dir = tmp_path_factory.mktemp("late-registry")
    first = start_registry(work_dir, username=registry.username, password=registry.password)
    platform_allowlist_add(first.host_port)
    compute_hosts.kill_machine("h1")
    worker = compute_hosts.start("h1")
    wait_until("host h1 registered again", lambda: ComputeHost.objects.filter(name=worker.name).exists(), 60)
    authfile = first.write_authfile(tmp_path_factory.mktemp("late-auth") / "auth.json")
    pushed = build_and_push(SIGTERM, cache_dir=oci_image_cache_dir, registry=first.host_port, authfile=authfile)
    stop_registry(first, remove_files=False)
    started = []

    class Down:
        host_port = first.host_port
        reference = pushed.reference

        @staticmethod
        def start():
            port = int(first.host_port.rsplit(":", 1)[1])
            started.append(start_registry(work_dir, username=registry.username, port=port, password=registry.password))

    yield Down
    for running in started:
        stop_registry(running)


def test_a_boot_retried_after_a_transient_registry_failure_ends_running(
    access, one_host, registry, registry_down_at_first
):
    registry_create(
        access=access,
        name="late",
        url=f"http://{registry_down_at_first.host_port}",
        username=registry.username,
        password=registry.password,
        insecure=True,
    )
    definition = {
        "id": "/late",
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "container": {"docker": {"image": registry_down_at_first.reference}},
        "portDefinitions": [],
    }
    deployment = app_create(access=access, definition=parse_app_definition(definition))

    retrying = wait_until(
        "the boot task retrying",
        lambda: Instance.objects.filter(app__marathon_id="/late", launch_attempt=1).first(),
        60,
    )
    reason = f"pull failed: cannot reach registry {registry_down_at_first.host_port} (attempt 1 of 4)"
    assert retrying.failure_reason == reason and retrying.not_before is not None
    assert retrying.status == InstanceStatus.PULLING  # not failed: the same instance will try again
    registry_down_at_first.start()

    wait_until("running after the retry", lambda: deployment_done(deployment))
    (running,) = active("/late")
    assert running.pk == retrying.pk and running.status == InstanceStatus.RUNNING
    assert running.failure_reason == "" and running.not_before is None
    assert App.objects.get(marathon_id="/late").launch_failures == 0
    app_delete(access=access, app=app_get(tenant=access.tenant, marathon_id="/late"))
    wait_until("app gone", lambda: not App.objects.filter(marathon_id="/late").exists())
