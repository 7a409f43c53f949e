"""Faults against the real stack (PostgreSQL, Redis, the web server, the portal worker, beat,
host workers booting real HyperVMs), each followed by the invariant audit
(tests/support/invariants.py): a host worker SIGKILLed mid-boot and restarted; a host cut off
from the portal for longer than the heartbeat expiry, then back; libvirtd restarted during a boot
and in steady state; Redis and PostgreSQL going away and coming back (tests/support/outages.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings

from portal.choices import HostState, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import ComputeHost, Instance
from portal.selectors import app_get
from portal.services.apps import app_create, app_delete
from tests.portal.test_pipeline import active, deployment_done, http_app, wait_until
from tests.support.invariants import audit
from tests.support.outages import libvirtd_restart, postgresql_outage, redis_reset
from tests.support.tenant_access import owner_access_with_registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SETTLE_S = 90


@pytest.fixture
def access(tenant, member_of, registry, test_images):
    return owner_access_with_registry(tenant, member_of, registry)


def hosts_up(compute_hosts, *names: str) -> dict:
    compute_hosts.kill_all_but(*names)
    workers = {name: compute_hosts.start(name) for name in names}
    wait_until(
        "hosts registered and up",
        lambda: (
            ComputeHost.objects.filter(name__in=[w.name for w in workers.values()], state=HostState.UP).count()
            == len(names)
        ),
        60,
    )
    wait_until(
        "earlier hosts down",
        lambda: (
            not ComputeHost.objects.exclude(name__in=[w.name for w in workers.values()])
            .filter(state=HostState.UP)
            .exists()
        ),
        60,
    )
    return workers


def settled(workers: dict) -> list[str]:
    state_dirs = {worker.name: worker.state_dir for worker in workers.values()}
    last: list[list[str]] = [[]]

    def clean() -> bool:
        last[0] = audit(state_dirs)
        return not last[0]

    try:
        wait_until("the invariant audit to pass", clean, SETTLE_S, poll_s=1)
    except AssertionError:
        pass
    return last[0]


def deleted_and_settled(access, workers: dict, marathon_id: str) -> list[str]:
    """Deletes the app, waits until it has no live instance, then audits (``settled``)."""
    app_delete(access=access, app=app_get(tenant=access.tenant, marathon_id=marathon_id))
    wait_until("deleted", lambda: not active(marathon_id))
    return settled(workers)


def api_problems(client_for, user) -> list[str]:
    client = client_for(user)
    problems = []
    for path in ("/v2/apps", "/v2/tasks", "/v2/deployments"):
        status = client.get(path).status_code
        if status >= 500:
            problems.append(f"GET {path} answered {status}")
    return problems


def test_a_host_worker_killed_mid_boot_and_restarted_leaves_no_orphan_or_duplicate(
    access, compute_hosts, test_images, client_for
):
    workers = hosts_up(compute_hosts, "f1")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/crash", instances=2))
    )
    wait_until(
        "a boot under way",
        lambda: Instance.objects.filter(
            app__marathon_id="/crash", status__in=[InstanceStatus.PREPARING, InstanceStatus.BOOTING]
        ).exists(),
        60,
        poll_s=0.05,
    )

    compute_hosts.crash("f1")
    workers["f1"] = compute_hosts.restart("f1")

    wait_until("the app healthy again", lambda: deployment_done(deployment))
    assert len(active("/crash")) == 2
    assert settled(workers) == []
    assert api_problems(client_for, access.actor) == []

    assert deleted_and_settled(access, workers, "/crash") == []


def test_pool_processes_killed_mid_boot_are_survived(access, compute_hosts, test_images, client_for):
    """The worker's main process lives on; its pool processes (the one running the boot among
    them) die, as an OOM kill would: the boot task goes back on the queue (acks_late with
    reject-on-worker-lost) and a new pool process finishes it."""
    workers = hosts_up(compute_hosts, "p1")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/child", instances=1))
    )
    wait_until(
        "a boot under way",
        lambda: Instance.objects.filter(
            app__marathon_id="/child", status__in=[InstanceStatus.PREPARING, InstanceStatus.BOOTING]
        ).exists(),
        60,
        poll_s=0.05,
    )
    main_pid = workers["p1"].process.pid
    children = Path(f"/proc/{main_pid}/task/{main_pid}/children").read_text().split()
    assert children, "the worker has no pool processes"
    for child in children:
        os.kill(int(child), signal.SIGKILL)

    wait_until("the app healthy again", lambda: deployment_done(deployment))
    assert workers["p1"].process.poll() is None
    assert len(active("/child")) == 1
    assert settled(workers) == []
    assert api_problems(client_for, access.actor) == []
    assert deleted_and_settled(access, workers, "/child") == []


def test_a_host_cut_off_past_the_heartbeat_expiry_comes_back_without_duplicates(
    access, compute_hosts, test_images, client_for
):
    workers = hosts_up(compute_hosts, "g1", "g2")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/cut", instances=2))
    )
    wait_until("healthy", lambda: deployment_done(deployment))
    assert {i.host.name for i in active("/cut")} == {workers["g1"].name, workers["g2"].name}
    cut_off = next(i for i in active("/cut") if i.host.name == workers["g1"].name)

    compute_hosts.freeze("g1")
    try:
        lost = wait_until(
            "the cut-off host's instance lost",
            lambda: Instance.objects.filter(pk=cut_off.pk, status=InstanceStatus.LOST).first(),
            settings.HOST_HEARTBEAT_EXPIRY_S + 60,
        )
        assert "stopped heartbeating" in lost.failure_reason
        wait_until(
            "replaced on the other host",
            lambda: (
                len(active("/cut")) == 2
                and all(
                    i.status == InstanceStatus.HEALTHY and i.host.name == workers["g2"].name for i in active("/cut")
                )
            ),
        )
        assert api_problems(client_for, access.actor) == []
    finally:
        compute_hosts.thaw("g1")

    # Back: its VM of the lost instance still runs until the host learns the database's truth.
    wait_until(
        "the host up again",
        lambda: ComputeHost.objects.filter(name=workers["g1"].name, state=HostState.UP).exists(),
        60,
    )
    assert settled(workers) == []
    assert len(active("/cut")) == 2
    assert deleted_and_settled(access, workers, "/cut") == []


def boot_under_way(marathon_id: str) -> bool:
    return Instance.objects.filter(
        app__marathon_id=marathon_id, status__in=[InstanceStatus.PREPARING, InstanceStatus.BOOTING]
    ).exists()


def test_libvirtd_restarted_during_a_boot_and_in_steady_state(access, compute_hosts, test_images, client_for):
    """VMs are children of libvirtd's QEMU, not of libvirtd: they run on while it restarts, and the
    host worker reconnects (vmworker.driver.host) for the boot under way and for what follows."""
    workers = hosts_up(compute_hosts, "v1")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/virt", instances=2))
    )
    wait_until("a boot under way", lambda: boot_under_way("/virt"), 60, poll_s=0.05)
    down_s = libvirtd_restart()
    assert down_s < 30

    wait_until("the app healthy", lambda: deployment_done(deployment))
    before = {str(i.pk) for i in active("/virt")}
    assert len(before) == 2

    libvirtd_restart()
    # Heartbeats go on (the host stays up), health probes pass, nothing is replaced.
    time.sleep(3 * settings.HOST_HEARTBEAT_INTERVAL_S)
    wait_until(
        "the host up after the restart",
        lambda: ComputeHost.objects.filter(name=workers["v1"].name, state=HostState.UP).exists(),
        60,
    )
    assert {str(i.pk) for i in active("/virt")} == before
    assert all(i.status == InstanceStatus.HEALTHY for i in active("/virt"))
    assert settled(workers) == []
    assert api_problems(client_for, access.actor) == []
    assert deleted_and_settled(access, workers, "/virt") == []


def test_redis_restarted_during_a_deploy_loses_no_instance(access, compute_hosts, test_images, client_for):
    """What a Redis restart (it keeps nothing on disk) does to the stack: every queued message and
    connection dropped (tests.support.outages.redis_reset), the boots and reports in flight gone.
    The portal's reconcile and the hosts' level-triggered heartbeats make it up: the deploy
    finishes with no duplicate and no orphan."""
    workers = hosts_up(compute_hosts, "r1")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/redis", instances=2))
    )
    wait_until("a boot under way", lambda: boot_under_way("/redis"), 60, poll_s=0.05)
    redis_reset()

    wait_until("the app healthy", lambda: deployment_done(deployment), 180)
    assert len(active("/redis")) == 2
    redis_reset()  # in steady state: nothing is replaced
    time.sleep(3 * settings.HOST_HEARTBEAT_INTERVAL_S)
    assert len(active("/redis")) == 2
    assert all(i.status == InstanceStatus.HEALTHY for i in active("/redis"))
    assert settled(workers) == []
    assert api_problems(client_for, access.actor) == []
    assert deleted_and_settled(access, workers, "/redis") == []


def test_postgresql_gone_for_a_while_loses_no_instance(access, compute_hosts, test_images, client_for):
    """Every connection to the portal's database cut and none taken for 10 s (a restart as its
    clients see it), once during a boot and once in steady state: the instance reports sent
    meanwhile are applied once it is back (their tasks retry), a heartbeat lost is the next one's,
    and a "running" report lost is made up by the host's reconcile; the VMs run on."""
    workers = hosts_up(compute_hosts, "q1")
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/pg", instances=2))
    )
    wait_until("a boot under way", lambda: boot_under_way("/pg"), 60, poll_s=0.05)
    postgresql_outage(seconds=10)

    wait_until("the app healthy", lambda: deployment_done(deployment), 180)
    before = {str(i.pk) for i in active("/pg")}
    assert len(before) == 2
    postgresql_outage(seconds=10)
    time.sleep(3 * settings.HOST_HEARTBEAT_INTERVAL_S)
    wait_until(
        "healthy again",
        lambda: all(i.status == InstanceStatus.HEALTHY for i in active("/pg")) and len(active("/pg")) == 2,
        60,
    )
    assert {str(i.pk) for i in active("/pg")} == before
    assert settled(workers) == []
    assert api_problems(client_for, access.actor) == []
    assert deleted_and_settled(access, workers, "/pg") == []
