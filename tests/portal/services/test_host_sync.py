"""The portal side of a host's messages (issue 12, portal.services.host_sync): a host report
registers and heartbeats the host and is checked before use; from it the portal fails stuck
boots and tells the host to remove the VMs of ended instances; the plan it sends carries each
stop's grace; a volume report is taken only from the volume's own host."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import ComputeHost, Instance
from portal.services.apps import app_create
from portal.services.host_sync import host_plan, host_report_apply, volume_report_apply
from portal.services.instances import instance_transition
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
APP = {
    "id": "/sync",
    "cmd": "sleep 1000",
    "cpus": 0.1,
    "mem": 64,
    "taskKillGracePeriodSeconds": 7,
    "container": {"docker": {"image": "demo/h:1"}},
}


class Sent(list):
    """The portal's commands to hosts: each must be signed with its host's key (checked here) and
    is recorded without its signature and time."""

    def send_task(self, name, args=None, kwargs=None, **options):
        from portal.services.host_keys import host_key
        from vmworker.report_signing import verify

        kwargs = dict(kwargs or {})
        signature, sent = kwargs.pop("signature", None), {"sent_at": kwargs.pop("sent_at", None)}
        host = str(options.get("queue", "")).removeprefix("host.")
        assert verify(host_key(host), name, list(args or ()), sent, signature), f"{name} is not signed for {host}"
        self.append((name, list(args or ()), kwargs, options.get("queue")))


@pytest.fixture
def sent(monkeypatch) -> Sent:
    from celery import current_app

    recorder = Sent()
    monkeypatch.setattr(current_app._get_current_object(), "send_task", recorder.send_task)
    return recorder


def report(name="sync-host", **fields) -> dict:
    return {
        "name": name,
        "libvirt_uri": "qemu:///system",
        "vcpus": 4,
        "memory_mib": 8192,
        "virt_type": "qemu",
        "probe_s": 1.2,
        "publish_ip": "127.0.0.1",
        "worker_started_at": time.time() - 3600,
        "boot_timeout_s": 90,
        "warm_pool": {"1x128": {"ready": 1, "target": 2}},
        "instance_ids": [],
        "volume_names": [],
        **fields,
    }


@pytest.fixture
def placed(tenant, member_of):
    compute_host_create("sync-host")
    access = tenant_access_resolve(user=member_of(tenant, TenantRole.DEVELOPER), slug=tenant.slug)
    app_create(access=access, definition=parse_app_definition(APP))
    return Instance.objects.get(app__marathon_id="/sync")


def test_a_first_report_registers_the_host_and_later_ones_heartbeat(sent) -> None:
    host_report_apply(report=report(register=True))
    host = ComputeHost.objects.get(name="sync-host")
    assert (host.vcpus, host.memory_mib, host.virt_type, host.queue) == (4, 8192, "qemu", "host.sync-host")
    assert host.warm_pool == {"1x128": {"ready": 1, "target": 2}}
    ComputeHost.objects.filter(pk=host.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    host_report_apply(report=report(warm_pool={"1x128": {"ready": 2, "target": 2}}))
    host.refresh_from_db()
    assert timezone.now() - host.last_heartbeat_at < timedelta(seconds=30)
    assert host.warm_pool["1x128"]["ready"] == 2
    assert sent == []


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "a b/../c"},
        {"virt_type": "xen"},
        {"vcpus": -1},
        {"vcpus": True},
        {"memory_mib": "lots"},
        {"worker_started_at": float("nan")},
        {"instance_ids": ["not-a-uuid"]},
        {"instance_ids": "x" * 10},
        {"warm_pool": []},
    ],
)
def test_a_malformed_report_is_dropped_and_changes_nothing(sent, bad) -> None:
    host_report_apply(report=report(**bad))
    assert not ComputeHost.objects.exists() and sent == []


def test_vms_of_ended_or_unknown_instances_are_removed_on_the_portals_word(placed, sent) -> None:
    stranger = str(uuid.uuid4())
    host_report_apply(report=report(instance_ids=[str(placed.pk), stranger]))
    assert sent == [("vmworker.remove_instances", ["sync-host", [stranger]], {}, "host.sync-host")]
    sent.clear()
    instance_transition(instance_id=placed.pk, to=InstanceStatus.STOPPING)
    assert instance_transition(instance_id=placed.pk, to=InstanceStatus.STOPPED) is not None
    host_report_apply(report=report(instance_ids=[str(placed.pk)]))
    assert sent == [("vmworker.remove_instances", ["sync-host", [str(placed.pk)]], {}, "host.sync-host")]


def test_a_boot_from_before_the_workers_start_and_one_past_its_limit_fail(placed, sent) -> None:
    instance_transition(instance_id=placed.pk, to=InstanceStatus.PULLING)
    host_report_apply(report=report(worker_started_at=time.time() - 3600))
    assert Instance.objects.get(pk=placed.pk).status == InstanceStatus.PULLING  # a boot under way
    host_report_apply(report=report(worker_started_at=time.time() + 1))
    failed = Instance.objects.get(pk=placed.pk)
    assert failed.status == InstanceStatus.FAILED
    assert failed.failure_reason == "the host's worker restarted during the boot"
    assert ("vmworker.remove_instances", ["sync-host", [str(placed.pk)]], {}, "host.sync-host") in sent


def test_a_boot_past_three_boot_timeouts_fails(placed, sent) -> None:
    instance_transition(instance_id=placed.pk, to=InstanceStatus.BOOTING)
    old = (timezone.now() - timedelta(seconds=400)).isoformat()
    Instance.objects.filter(pk=placed.pk).update(phase_times={InstanceStatus.BOOTING: old})
    host_report_apply(report=report(boot_timeout_s=100))
    assert Instance.objects.get(pk=placed.pk).failure_reason == "the boot did not finish within 300 s"


def test_the_plan_names_up_stopping_and_live_instances_with_each_stops_grace(placed) -> None:
    host = ComputeHost.objects.get(name="sync-host")
    plan = host_plan(host)
    assert (plan["up"], plan["stopping"], plan["active"]) == ([], {}, [str(placed.pk)])
    instance_transition(instance_id=placed.pk, to=InstanceStatus.STOPPING)
    assert host_plan(host)["stopping"] == {str(placed.pk): 7}


def test_a_volume_report_from_another_host_changes_nothing(placed) -> None:
    from portal.models import Volume

    compute_host_create("other-host")
    volume_report_apply(host_name="other-host", volume_id=str(uuid.uuid4()), destroyed=True)
    volume_report_apply(host_name="other-host", volume_id="../../etc", used_bytes=1)
    assert Volume.objects.count() == 0  # nothing to change, and no error either


def test_the_plan_names_a_boot_for_healing_only_once_its_phase_is_old(placed) -> None:
    from portal.services.host_sync import BOOTING_HEAL_AFTER_S

    host = ComputeHost.objects.get(name="sync-host")
    instance_transition(instance_id=placed.pk, to=InstanceStatus.BOOTING)
    assert host_plan(host)["booting"] == []  # a boot under way: its own report comes
    old = (timezone.now() - timedelta(seconds=BOOTING_HEAL_AFTER_S + 1)).isoformat()
    Instance.objects.filter(pk=placed.pk).update(phase_times={InstanceStatus.BOOTING: old})
    assert host_plan(host)["booting"] == [str(placed.pk)]


def test_a_report_that_meets_the_database_gone_is_applied_once_it_is_back(monkeypatch) -> None:
    from django.db import InterfaceError, OperationalError

    from portal import tasks
    from portal.services.host_keys import host_key
    from vmworker.report_signing import sign

    applied = []
    failures = [OperationalError("server closed the connection"), InterfaceError("connection already closed")]

    def apply(*, report):
        if failures:
            raise failures.pop(0)
        applied.append(report)

    monkeypatch.setattr("portal.services.host_reports.instance_report_apply", apply)
    monkeypatch.setattr(tasks.instance_report, "retry_backoff", 0)  # eager retries, no wait
    report = {"instance_id": "x", "host": "sync-host"}
    sent = {"sent_at": time.time()}
    signature = sign(host_key("sync-host"), "portal.instance_report", [report], sent)
    result = tasks.instance_report.apply(args=[report], kwargs=sent | {"signature": signature})
    assert result.successful(), result.traceback
    assert applied == [report]
