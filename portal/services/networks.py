"""Tenant networks and the portal's IPAM (PostgreSQL is the only record of who holds which address).

- ``network_ensure`` gets or makes a tenant's network by name, with its quota claim (resource
  ``networks``) and a /24 from ``10.<n>.0.0`` (n = 1..254) not yet used by the tenant, under the
  tenant's quota row lock: two first deploys racing for one name make one network.
- ``network_address_allocate`` hands an instance the lowest free host address of its network
  under the network row's lock (``SELECT ... FOR UPDATE``), so concurrent placements never get
  the same address; the (network, address) unique constraint backs that up. An instance keeps
  its address across retries (one allocation per instance). A full network raises
  ``NetworkFull``.
- ``network_address_release`` frees it; portal.services.instances calls it when an instance ends.
- ``network_ids_in_use`` names the networks some instance holds an address on (the host
  workers' network sweep keeps those on libvirt).
- ``network_remove_unused`` deletes the tenant's networks no app uses any more and no instance
  holds an address on (with their quota claims); the engine calls it when an app is deleted, so
  a tenant without apps holds no network (a later deploy makes its default one again).

Which network an app joins (``network_name_for``): ``networks: [{"mode": "container", "name": n}]``
joins ``n``; ``container/bridge``, a nameless ``container`` and an absent ``networks`` join the
tenant's ``default`` network. Published ports are independent of it (QEMU user networking).
"""

from __future__ import annotations

import ipaddress
import logging

from django.db import transaction

from portal.marathon import AppDefinition
from portal.marathon.app_definition import NetworkMode
from portal.models import App, Instance, Network, NetworkAllocation
from tenants.errors import Conflict
from tenants.models import Quota, Tenant
from tenants.services import ResourceRequest, claim_release, quota_reserve

logger = logging.getLogger(__name__)

DEFAULT_NETWORK_NAME = "default"
NETWORK_CLAIM_KIND = "network"
SUBNET_PREFIX_LENGTH = 24
SUBNET_POOL = tuple(ipaddress.IPv4Network(f"10.{n}.0.0/{SUBNET_PREFIX_LENGTH}") for n in range(1, 255))


class NetworkFull(Conflict):
    """Every host address of the network is held by a live instance."""


class SubnetsExhausted(Conflict):
    """The tenant uses every subnet of the pool."""


class NetworkGone(Conflict):
    """The network was removed (its last app was deleted) while an instance was being placed on it."""


def network_name_for(definition: AppDefinition) -> str:
    network = definition.networks[0] if definition.networks else None
    if network is not None and network.mode is NetworkMode.CONTAINER and network.name:
        return network.name
    return DEFAULT_NETWORK_NAME


def network_ensure(*, tenant: Tenant, name: str) -> Network:
    """The tenant's network called ``name``, made (with its quota claim) when it does not exist.
    Raises QuotaExceeded or SubnetsExhausted (nothing written)."""
    existing = Network.objects.for_tenant(tenant).filter(name=name).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        # The quota row is the tenant's lock: a concurrent first use waits here, then finds it.
        Quota.objects.select_for_update().get(tenant=tenant)
        existing = Network.objects.for_tenant(tenant).filter(name=name).first()
        if existing is not None:
            return existing
        used = set(Network.objects.for_tenant(tenant).values_list("subnet", flat=True))
        subnet = next((str(s) for s in SUBNET_POOL if str(s) not in used), None)
        if subnet is None:
            raise SubnetsExhausted(
                f"Tenant networks use all {len(SUBNET_POOL)} subnets of 10.1-254.0.0/24; no room for '{name}'.",
                field="networks",
            )
        network = Network(tenant=tenant, name=name, subnet=subnet)
        quota_reserve(
            tenant=tenant, owner_kind=NETWORK_CLAIM_KIND, owner_id=str(network.id), request=ResourceRequest(networks=1)
        )
        network.save(force_insert=True)
    logger.info("network.created", extra={"tenant": tenant.slug, "network": name, "subnet": subnet})
    return network


def network_address_allocate(*, instance: Instance, network: Network) -> NetworkAllocation:
    """The instance's address on ``network``: the one it holds already, else the lowest free one."""
    with transaction.atomic():
        locked = Network.objects.select_for_update().filter(pk=network.pk).first()
        if locked is None:
            raise NetworkGone(f"Network '{network.name}' was removed meanwhile; placing again.", field="networks")
        held = NetworkAllocation.objects.filter(instance=instance).first()
        if held is not None:
            return held
        used = set(NetworkAllocation.objects.filter(network=locked).values_list("address", flat=True))
        subnet = ipaddress.IPv4Network(locked.subnet)
        address = next((str(host) for host in subnet.hosts() if str(host) not in used), None)
        if address is None:
            raise NetworkFull(
                f"Network '{locked.name}' ({locked.subnet}) has no free address: "
                f"all {subnet.num_addresses - 2} are held by running instances.",
                field="networks",
            )
        return NetworkAllocation.objects.create(network=locked, instance=instance, address=address)


def network_address_release(*, instance_id) -> int:
    deleted, _ = NetworkAllocation.objects.filter(instance_id=instance_id).delete()
    return deleted


def network_remove_unused(*, tenant: Tenant) -> list[str]:
    """Delete the tenant's networks that no app's current version joins and no instance holds an
    address on; returns their names. Under the quota row lock, like ``network_ensure``."""
    from portal.selectors import app_definition

    with transaction.atomic():
        Quota.objects.select_for_update().get(tenant=tenant)
        apps = App.objects.for_tenant(tenant).filter(current_version__isnull=False).select_related("current_version")
        in_use = {network_name_for(app_definition(app)) for app in apps}
        removed = []
        for network in Network.objects.for_tenant(tenant).select_for_update().exclude(name__in=in_use):
            if network.allocations.exists():
                continue
            claim_release(tenant=tenant, owner_kind=NETWORK_CLAIM_KIND, owner_id=str(network.pk))
            network.delete()
            removed.append(network.name)
    if removed:
        logger.info("network.removed", extra={"tenant": tenant.slug, "networks": removed})
    return removed


def network_ids_in_use() -> set[str]:
    """Every network some instance holds an address on (instances free theirs when they end):
    what a host's network sweep must leave alone, wherever the instance runs (hosts may share
    one libvirtd, and a boot makes the network before its domain uses it)."""
    return {str(pk) for pk in NetworkAllocation.objects.values_list("network_id", flat=True).distinct()}


def network_attachment_of(instance: Instance) -> tuple[Network, NetworkAllocation] | None:
    """What the host worker needs to attach the instance: its network and its address (or None)."""
    allocation = NetworkAllocation.objects.select_related("network").filter(instance=instance).first()
    if allocation is None:
        return None
    return allocation.network, allocation
