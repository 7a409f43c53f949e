"""Host ports a program outside the platform holds: the worker blocks them, placement skips them."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from portal.models import ComputeHost
from portal.scheduling import NoValidHost, PlacementRequest, instance_place
from portal.services.hosts import host_ports_block
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(settings):
    settings.HOST_PORT_RANGE = (21000, 21003)
    return compute_host_create("host-p")


def place(*host_ports: int) -> tuple[int, ...]:
    with transaction.atomic():
        request = PlacementRequest(app_id=0, vcpus=1, memory_mib=128, host_ports=host_ports, constraints=())
        return instance_place(request).host_ports


def test_a_blocked_port_is_skipped_and_a_fixed_one_is_refused(host):
    assert place(0) == (21000,)
    host_ports_block(name=host.name, ports=[21000, 21001])
    assert place(0, 0) == (21002, 21003)
    with pytest.raises(NoValidHost, match="host port taken"):
        place(21001)


def test_a_block_ends_after_its_time(host, settings):
    settings.HOST_PORT_BLOCK_S = 60
    host_ports_block(name=host.name, ports=[21000])
    ComputeHost.objects.filter(pk=host.pk).update(blocked_ports={"21000": time.time() - 1})
    assert place(0) == (21000,)
    host_ports_block(name=host.name, ports=[21001])  # and the stale entry is dropped on the next write
    assert set(ComputeHost.objects.get(pk=host.pk).blocked_ports) == {"21001"}


def test_running_out_of_ports_is_no_valid_host(host):
    host_ports_block(name=host.name, ports=[21000, 21001, 21002])
    assert place(0) == (21003,)  # the range's last port is included
    with pytest.raises(NoValidHost, match="no free host ports left in 21000-21003"):
        place(0, 0)


def test_placement_refuses_a_fixed_port_outside_the_range_whatever_path_it_came_by(host):
    with pytest.raises(NoValidHost, match="outside the platform's host port range 21000-21003"):
        place(5999)


def test_placement_refuses_a_port_the_platform_reserves(host, settings):
    settings.RESERVED_HOST_PORTS = frozenset({21002})
    with pytest.raises(NoValidHost, match="host port 21002 is reserved by the platform"):
        place(21002)
    assert place(21001) == (21001,)
