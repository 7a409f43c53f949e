"""Tenant networks on a compute host (no Django).

Contract:
- A tenant network is an isolated L2 segment: a libvirt network that is only a bridge, with no
  ``<ip>`` (the host has no address on it, so nothing routes in or out), no ``<forward>`` (no
  uplink, no NAT) and no DHCP. Addresses come from the portal's IPAM and reach the guest init
  in its config; VMs of one network reach each other, nothing reaches another network.
- ``TenantNetwork.for_network_id(id)`` derives the libvirt network name and the bridge name
  (at most 15 characters, the kernel's IFNAMSIZ - 1) from the portal's network id, so every
  host derives the same names and a retried boot finds the network it made.
- ``NetworkAttachment`` is what one instance gets: the network, its MAC and its address/prefix.
  ``instance_mac`` is deterministic per instance and NIC role, locally administered unicast.
- ``Host.network_ensure`` defines and starts the network idempotently, ``Host.network_remove``
  stops and undefines it (the fake driver models both). libvirt's ``default`` network is never
  touched: our names all start with ``NETWORK_NAME_PREFIX``.
"""

from vmworker.network.tenant import (
    BRIDGE_PREFIX,
    NETWORK_NAME_PREFIX,
    NetworkAttachment,
    NetworkConfig,
    TenantNetwork,
    instance_mac,
)

__all__ = [
    "BRIDGE_PREFIX",
    "NETWORK_NAME_PREFIX",
    "NetworkAttachment",
    "NetworkConfig",
    "TenantNetwork",
    "instance_mac",
]
