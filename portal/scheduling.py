"""Placement: filters then weighers over registered compute hosts (Nova's shape), with the
capacity claimed under the host rows' locks so two placements never overbook one host.

What a host has in use is summed from the live instances placed on it, so nothing drifts;
published host ports are allocated per host from a range, avoiding those in use."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, HostState
from portal.marathon.app_definition import Constraint
from portal.models import ComputeHost, Instance
from portal.platform_policy import platform_policy
from tenants.errors import DomainError


class NoValidHost(DomainError):
    status_code = 503


@dataclass(frozen=True)
class PlacementRequest:
    app_id: int
    vcpus: int
    memory_mib: int
    host_ports: tuple[int, ...]  # one per published port, in order; 0 = allocate one
    constraints: tuple[Constraint, ...]
    pinned_host_id: int | None = None  # a resident instance runs where its volumes are

    @property
    def fixed_host_ports(self) -> set[int]:
        return {port for port in self.host_ports if port}


@dataclass(frozen=True)
class Placement:
    host: ComputeHost
    host_ports: tuple[int, ...]  # the request's ports with every 0 replaced by an allocated one


def hosts_alive():
    cutoff = timezone.now() - timedelta(seconds=settings.HOST_HEARTBEAT_EXPIRY_S)
    return ComputeHost.objects.filter(state=HostState.UP, last_heartbeat_at__gte=cutoff)


def _usage_by_host(host_ids: list[int]) -> dict[int, dict]:
    rows = (
        Instance.objects.filter(host_id__in=host_ids, status__in=INSTANCE_ACTIVE)
        .values("host_id")
        .annotate(vcpus=Sum("vcpus"), memory_mib=Sum("memory_mib"))
    )
    return {row["host_id"]: row for row in rows}


def _ports_by_address(addresses: set[str]) -> dict[str, set[int]]:
    """Ports in use per publish address: hosts on one machine share 127.0.0.1's ports."""
    used: dict[str, set[int]] = {address: set() for address in addresses}
    for address, ports in Instance.objects.filter(
        host__publish_ip__in=addresses, status__in=INSTANCE_ACTIVE
    ).values_list("host__publish_ip", "host_ports"):
        used[address].update(ports or [])
    return used


def _app_count_by_host(app_id: int, host_ids: list[int]) -> dict[int, int]:
    rows = (
        Instance.objects.filter(app_id=app_id, host_id__in=host_ids, status__in=INSTANCE_ACTIVE)
        .values("host_id")
        .annotate(n=Count("id"))
    )
    return {row["host_id"]: row["n"] for row in rows}


def _constraints_allow(host: ComputeHost, constraints, app_instances_here: int) -> bool:
    for constraint in constraints:
        if constraint.operator == "UNIQUE" and app_instances_here > 0:
            return False
        if constraint.operator == "CLUSTER" and constraint.value and host.name != constraint.value:
            return False
        if constraint.operator == "MAX_PER" and app_instances_here >= int(constraint.value or 1):
            return False
    return True


def instance_place(request: PlacementRequest) -> Placement:
    """Must run in the caller's transaction: the chosen host's row stays locked until commit.
    Host rows are the last lock of a placement (quota -> network -> hosts): take any quota or
    network row lock before calling this, never after."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("instance_place must run inside transaction.atomic()")
    # Defence in depth: the parser and the app services refuse such ports already; whatever
    # path a definition took (an old stored version, a future caller), nothing is published
    # outside the platform's range or on a port the platform reserves.
    policy = platform_policy()
    for port in sorted(request.fixed_host_ports):
        problem = policy.host_port_problem(port)
        if problem is not None:
            raise NoValidHost(f"The instance cannot be placed: {problem}.")
    hosts = list(hosts_alive().select_for_update().order_by("id"))
    if request.pinned_host_id is not None:
        hosts = [host for host in hosts if host.pk == request.pinned_host_id]
        if not hosts:
            pinned = ComputeHost.objects.filter(pk=request.pinned_host_id).values_list("name", flat=True).first()
            raise NoValidHost(
                f"Waiting for host {pinned}, which holds the instance's volumes: it is down "
                "(a resident instance is not moved to another host)."
            )
    if not hosts:
        raise NoValidHost("No compute host is up.")
    ids = [host.id for host in hosts]
    usage, app_counts = _usage_by_host(ids), _app_count_by_host(request.app_id, ids)
    used_ports = _ports_by_address({host.publish_ip for host in hosts})
    now = time.time()
    for host in hosts:  # held by programs outside the platform (see host_ports_block)
        used_ports[host.publish_ip].update(int(port) for port, until in host.blocked_ports.items() if until > now)
    ports = {host.id: used_ports[host.publish_ip] for host in hosts}
    reasons = []
    candidates = []
    for host in hosts:
        used = usage.get(host.id, {"vcpus": 0, "memory_mib": 0})
        free_vcpus = math.floor(host.vcpus * settings.CPU_ALLOCATION_RATIO) - (used["vcpus"] or 0)
        free_memory = host.memory_mib - settings.HOST_RESERVED_MEMORY_MIB - (used["memory_mib"] or 0)
        if free_vcpus < request.vcpus or free_memory < request.memory_mib:
            reasons.append(f"{host.name}: not enough capacity")
            continue
        if request.fixed_host_ports & ports[host.id]:
            reasons.append(f"{host.name}: host port taken")
            continue
        if not _constraints_allow(host, request.constraints, app_counts.get(host.id, 0)):
            reasons.append(f"{host.name}: constraints")
            continue
        candidates.append((free_memory / max(host.memory_mib, 1), host))
    if not candidates:
        raise NoValidHost("No host can take the instance (" + "; ".join(reasons) + ").")
    host = max(candidates, key=lambda pair: (pair[0], -pair[1].id))[1]
    taken = ports[host.id] | request.fixed_host_ports
    first, last = settings.HOST_PORT_RANGE
    free = (port for port in range(first, last + 1) if port not in taken)
    allocated: list[int] = []
    for wanted in request.host_ports:
        port = wanted or next(free, None)
        if port is None:
            raise NoValidHost(f"{host.name}: no free host ports left in {first}-{last}.")
        allocated.append(port)
    return Placement(host=host, host_ports=tuple(allocated))
