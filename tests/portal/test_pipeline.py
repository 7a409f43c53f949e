"""The deploy pipeline against the real stack: PostgreSQL, Redis, the web server, a portal
Celery worker, Celery beat (the reconciler) and host workers booting real HyperVMs (TCG)."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from django.db import close_old_connections

from portal.choices import INSTANCE_ACTIVE, DeploymentStatus, HostState, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Deployment, Instance
from portal.selectors import app_get
from portal.services.apps import app_create, app_delete
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.selectors import quota_usage
from tenants.services import registry_create

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


def deployment_done(deployment) -> bool:
    return Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.SUCCEEDED


@pytest.fixture
def access(tenant, member_of, registry, test_images):
    owner = member_of(tenant, TenantRole.OWNER)
    access = tenant_access_resolve(user=owner, slug=tenant.slug)
    registry_create(
        access=access,
        name="local",
        url=f"http://{registry.host_port}",
        username=registry.username,
        password=registry.password,
        insecure=True,
    )
    return access


@pytest.fixture
def one_host(compute_hosts):
    compute_hosts.kill_all_but("h1")
    worker = compute_hosts.start("h1")
    wait_until("host h1 registered", lambda: ComputeHost.objects.filter(name=worker.name).exists(), 60)
    return worker


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
    lowest_healthy = 2
    deadline = time.monotonic() + WAIT_S
    while marathon.list_deployments():
        close_old_connections()
        lowest_healthy = min(lowest_healthy, sum(i.status == InstanceStatus.HEALTHY for i in active("/web")))
        assert time.monotonic() < deadline, "the rolling update did not finish"
        time.sleep(0.2)
    assert lowest_healthy >= 2  # minimumHealthCapacity 1 with 2 instances: never below 2 healthy
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
