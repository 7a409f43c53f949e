"""Placement (portal.scheduling.instance_place) on real PostgreSQL, with hosts and instances made
by factories: which host wins, why none does, how host ports are allocated."""

import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from portal.choices import HostState, InstanceStatus
from portal.marathon.app_definition import Constraint
from portal.scheduling import NoValidHost, PlacementRequest, instance_place
from tests.portal.factories import AppFactory, ComputeHostFactory, InstanceFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_other_hosts")]


@pytest.fixture
def no_other_hosts():
    from portal.models import ComputeHost

    ComputeHost.objects.all().delete()


def place(app_id: int = 0, *, vcpus: int = 1, memory_mib: int = 64, host_ports=(), constraints=()):
    with transaction.atomic():
        return instance_place(
            PlacementRequest(
                app_id=app_id,
                vcpus=vcpus,
                memory_mib=memory_mib,
                host_ports=tuple(host_ports),
                constraints=tuple(constraints),
            )
        )


@pytest.mark.django_db(transaction=True)
def test_placement_must_run_inside_a_transaction() -> None:
    ComputeHostFactory()
    with pytest.raises(RuntimeError, match="transaction"):
        instance_place(PlacementRequest(app_id=0, vcpus=1, memory_mib=64, host_ports=(), constraints=()))


def test_the_host_with_the_largest_free_memory_share_wins_and_ties_go_to_the_oldest() -> None:
    first, second = ComputeHostFactory(), ComputeHostFactory()
    assert place().host == first  # equal: the lower id
    InstanceFactory(host=first, status=InstanceStatus.RUNNING, memory_mib=4096)
    assert place().host == second
    # Ended instances hold nothing.
    InstanceFactory(host=second, status=InstanceStatus.STOPPED, memory_mib=8192)
    assert place().host == second


@override_settings(HOST_RESERVED_MEMORY_MIB=1024, CPU_ALLOCATION_RATIO=2)
def test_no_host_with_room_is_a_503_naming_each_hosts_reason() -> None:
    small = ComputeHostFactory(vcpus=1, memory_mib=2048)
    with pytest.raises(NoValidHost) as raised:
        place(memory_mib=1025)  # 2048 - 1024 reserved leaves 1024
    assert raised.value.status_code == 503
    assert f"{small.name}: not enough capacity" in raised.value.message
    assert place(memory_mib=1024).host == small
    with pytest.raises(NoValidHost):
        place(vcpus=3)  # 1 vCPU x ratio 2


def test_dead_and_down_hosts_are_never_chosen() -> None:
    ComputeHostFactory(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    ComputeHostFactory(state=HostState.DOWN)
    with pytest.raises(NoValidHost, match="No compute host is up"):
        place()
    alive = ComputeHostFactory()
    assert place().host == alive


@override_settings(HOST_PORT_RANGE=(21000, 21004))
def test_ports_are_allocated_from_the_range_skipping_used_and_blocked_ones_of_the_same_address() -> None:
    ComputeHostFactory(blocked_ports={"21001": time.time() + 600, "21003": time.time() - 1})
    # Another host on the same address shares its ports; one elsewhere does not.
    neighbour = ComputeHostFactory(memory_mib=1024 * 1024)
    InstanceFactory(host=neighbour, status=InstanceStatus.HEALTHY, host_ports=[21000])
    ComputeHostFactory(publish_ip="127.0.0.3", memory_mib=1024)

    placement = place(host_ports=(0, 0))
    assert placement.host == neighbour  # most free memory
    assert placement.host_ports == (21002, 21003)  # 21000 used, 21001 blocked; 21003's block ended
    with pytest.raises(NoValidHost, match="no free host ports"):
        place(host_ports=(0, 0, 0, 0, 0))


@override_settings(HOST_PORT_RANGE=(21000, 21004))
def test_a_fixed_host_port_taken_on_a_host_rules_that_host_out() -> None:
    busy, free = ComputeHostFactory(memory_mib=1024 * 1024), ComputeHostFactory(publish_ip="127.0.0.3")
    InstanceFactory(host=busy, status=InstanceStatus.RUNNING, host_ports=[21004])
    placement = place(host_ports=(21004, 0))
    assert placement.host == free
    assert placement.host_ports == (21004, 21000)


@override_settings(HOST_PORT_RANGE=(21000, 21004))
def test_a_fixed_host_port_outside_the_platform_range_is_refused_even_here() -> None:
    ComputeHostFactory()
    with pytest.raises(NoValidHost, match="cannot be placed"):
        place(host_ports=(5000,))


def test_constraints_unique_cluster_and_max_per() -> None:
    one, two = ComputeHostFactory(), ComputeHostFactory()
    app = AppFactory()
    InstanceFactory(app=app, host=one, status=InstanceStatus.RUNNING)

    assert place(app.pk, constraints=[Constraint("hostname", "UNIQUE", None)]).host == two
    assert place(app.pk, constraints=[Constraint("hostname", "CLUSTER", one.name)]).host == one
    InstanceFactory(app=app, host=two, status=InstanceStatus.RUNNING)
    with pytest.raises(NoValidHost, match="constraints"):
        place(app.pk, constraints=[Constraint("hostname", "UNIQUE", None)])
    with pytest.raises(NoValidHost, match="constraints"):
        place(app.pk, constraints=[Constraint("hostname", "MAX_PER", "1")])
    assert place(app.pk, constraints=[Constraint("hostname", "MAX_PER", "2")]).host in {one, two}
