"""Usage samples as a host sends them: kept in Redis for live instances of that host only,
every figure checked and clamped, the last SAMPLES_KEPT per instance; hostile batches never raise."""

from __future__ import annotations

import math
import uuid

import pytest

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import Instance
from portal.services.apps import app_create
from portal.services.usage import (
    CPU_OVERHEAD_CORES,
    MEMORY_OVERHEAD_BYTES,
    SAMPLES_KEPT,
    _redis,
    usage_latest,
    usage_record,
    usage_series,
)
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_usage():
    def clear():
        client = _redis()
        for key in client.scan_iter("portal:usage:*"):
            client.delete(key)

    clear()
    yield
    clear()


@pytest.fixture
def running(tenant, member_of):
    """Two running instances (1 vCPU, 128 MiB) on host-u."""
    host = compute_host_create("host-u")
    access = tenant_access_resolve(user=member_of(tenant, TenantRole.DEVELOPER), slug=tenant.slug)
    definition = parse_app_definition(
        {"id": "/u", "instances": 2, "cpus": 1, "mem": 128, "container": {"docker": {"image": "r/x:1"}}}
    )
    app = app_create(access=access, definition=definition).app
    Instance.objects.filter(app=app).update(host=host, status=InstanceStatus.RUNNING)
    return [str(pk) for pk in Instance.objects.filter(app=app).order_by("created_at").values_list("pk", flat=True)]


def sample(instance_id, cpu=0.25, mem=64 * MIB, t=1000.0):
    return {"instance_id": instance_id, "t": t, "cpu": cpu, "mem": mem}


def test_samples_of_the_host_s_live_instances_are_kept_newest_last(running):
    first, second = running

    kept = usage_record(host_name="host-u", samples=[sample(first, t=1.0), sample(second, cpu=0.5, t=1.0)])
    usage_record(host_name="host-u", samples=[sample(first, cpu=0.75, t=4.0)])

    assert kept == 2
    series = usage_series(instance_ids=running)
    assert [(s["t"], s["cpu"]) for s in series[first]] == [(1.0, 0.25), (4.0, 0.75)]
    assert series[second] == [{"t": 1.0, "cpu": 0.5, "mem": 64 * MIB}]
    assert usage_latest(instance_ids=running)[first]["cpu"] == 0.75


def test_only_the_last_samples_are_kept(running):
    first = running[0]
    for n in range(SAMPLES_KEPT + 15):
        usage_record(host_name="host-u", samples=[sample(first, t=float(n))])

    times = [s["t"] for s in usage_series(instance_ids=[first])[first]]

    assert times == [float(n) for n in range(15, SAMPLES_KEPT + 15)]


def test_samples_for_another_host_s_or_an_ended_instance_are_dropped(running):
    first, second = running
    compute_host_create("host-other")
    Instance.objects.filter(pk=second).update(status=InstanceStatus.STOPPED)

    from_elsewhere = usage_record(host_name="host-other", samples=[sample(first)])
    ended = usage_record(host_name="host-u", samples=[sample(second)])
    unknown = usage_record(host_name="host-u", samples=[sample(str(uuid.uuid4()))])

    assert (from_elsewhere, ended, unknown) == (0, 0, 0)
    assert usage_series(instance_ids=running) == {first: [], second: []}


def test_figures_are_clamped_into_what_the_instance_can_use(running):
    first, second = running

    usage_record(host_name="host-u", samples=[sample(first, cpu=1e12, mem=1e30), sample(second, cpu=-5, mem=-1)])

    latest = usage_latest(instance_ids=running)
    assert (latest[first]["cpu"], latest[first]["mem"]) == (1 + CPU_OVERHEAD_CORES, 128 * MIB + MEMORY_OVERHEAD_BYTES)
    assert (latest[second]["cpu"], latest[second]["mem"]) == (0, 0)


@pytest.mark.parametrize(
    "batch",
    [
        None,
        "samples",
        {"instance_id": "x"},
        [None, 1, "x", [], {}],
        [{"instance_id": "not-a-uuid", "t": 1, "cpu": 1, "mem": 1}],
        [{"instance_id": "0" * 10_000, "t": 1, "cpu": 1, "mem": 1}],
        [{"instance_id": "{first}", "t": math.nan, "cpu": 1, "mem": 1}],
        [{"instance_id": "{first}", "t": 1, "cpu": math.inf, "mem": 1}],
        [{"instance_id": "{first}", "t": 1, "cpu": "0.5", "mem": 1}],
        [{"instance_id": "{first}", "t": 1, "cpu": True, "mem": 1}],
        [{"instance_id": "{first}", "t": 1, "cpu": 0.5, "mem": 10**400}],
        [{"instance_id": "{first}", "t": 1, "cpu": 0.5}],
        [{"instance_id": ["{first}"], "t": 1, "cpu": 0.5, "mem": 1}],
    ],
)
def test_hostile_batches_never_raise_and_keep_nothing(running, batch):
    first = running[0]
    if isinstance(batch, list):
        batch = [
            {k: (v.replace("{first}", first) if isinstance(v, str) else v) for k, v in s.items()}
            if isinstance(s, dict)
            else s
            for s in batch
        ]

    assert usage_record(host_name="host-u", samples=batch) == 0
    assert usage_series(instance_ids=[first]) == {first: []}


def test_a_huge_batch_is_cut_to_its_bound(running):
    from portal.services.usage import BATCH_MAX_SAMPLES

    first = running[0]
    batch = [sample(str(uuid.uuid4())) for _ in range(BATCH_MAX_SAMPLES)] + [sample(first)]

    assert usage_record(host_name="host-u", samples=batch) == 0
