"""Tenant network naming, attachments and the libvirt ``<network>`` XML (see the package docstring)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NETWORK_NAME_PREFIX = "hvm-tnet-"
BRIDGE_PREFIX = "hvbr"
BRIDGE_NAME_MAX = 15  # IFNAMSIZ - 1
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# First octet 0x02: locally administered, unicast. Five bytes of hash make a collision among
# the few hundred NICs of one segment vanishingly unlikely (libvirt's own are 52:54:00:...).
_MAC_FIRST_OCTET = 0x02


@dataclass(frozen=True)
class TenantNetwork:
    """One tenant network as this host knows it: names only, derived from the portal's id."""

    network_id: str
    libvirt_name: str
    bridge: str

    @classmethod
    def for_network_id(cls, network_id: str) -> TenantNetwork:
        canonical = str(uuid.UUID(str(network_id)))
        bridge = BRIDGE_PREFIX + canonical.replace("-", "")[: BRIDGE_NAME_MAX - len(BRIDGE_PREFIX)]
        return cls(network_id=canonical, libvirt_name=NETWORK_NAME_PREFIX + canonical, bridge=bridge)

    def __post_init__(self) -> None:
        if not self.libvirt_name.startswith(NETWORK_NAME_PREFIX):
            raise ValueError(f"tenant network names start with {NETWORK_NAME_PREFIX!r}")
        if not 1 <= len(self.bridge) <= BRIDGE_NAME_MAX:
            raise ValueError(f"bridge name {self.bridge!r} must be 1-{BRIDGE_NAME_MAX} characters")


@dataclass(frozen=True)
class NetworkAttachment:
    """An instance's NIC on a tenant network: its MAC and its address with prefix (``10.1.0.5/24``)."""

    network: TenantNetwork
    mac: str
    ip_cidr: str

    def __post_init__(self) -> None:
        if not _MAC_RE.match(self.mac):
            raise ValueError(f"mac {self.mac!r} must be lower-case aa:bb:cc:dd:ee:ff")
        interface = ipaddress.IPv4Interface(self.ip_cidr)  # raises ValueError on a bad address
        if interface.ip == interface.network.network_address or interface.ip == interface.network.broadcast_address:
            raise ValueError(f"{self.ip_cidr} is not a host address of its subnet")

    @property
    def ip_address(self) -> str:
        return str(ipaddress.IPv4Interface(self.ip_cidr).ip)


def instance_mac(instance_id: str, role: str) -> str:
    """The MAC of one of the instance's NICs (``role``: "tenant", "user"): the same on every call,
    so a retried boot renders the same domain and the guest init finds its interface by it."""
    digest = hashlib.sha256(f"{uuid.UUID(str(instance_id))}/{role}".encode()).digest()
    return ":".join(f"{octet:02x}" for octet in (_MAC_FIRST_OCTET, *digest[:5]))


@dataclass(frozen=True)
class NetworkConfig:
    """libvirt network XML for an isolated segment: name, bridge, nothing else.

    Without ``<forward>`` libvirt makes an isolated network; without ``<ip>`` it gives the host
    no address on the bridge and runs no dnsmasq. STP off and no forward delay: the bridge has
    no loops (only tap devices), and a delay would hold a fresh VM's first packets back.
    """

    name: str
    bridge: str

    @classmethod
    def for_network(cls, network: TenantNetwork) -> NetworkConfig:
        return cls(name=network.libvirt_name, bridge=network.bridge)

    def to_xml(self) -> str:
        root = ET.Element("network")
        ET.SubElement(root, "name").text = self.name
        ET.SubElement(root, "bridge", {"name": self.bridge, "stp": "off", "delay": "0"})
        ET.indent(root)
        return ET.tostring(root, encoding="unicode")

    @classmethod
    def parse_str(cls, xml: str) -> NetworkConfig:
        """Reads our XML or libvirt's ``XMLDesc``; refuses a network that is not isolated."""
        root = ET.fromstring(xml)
        if root.tag != "network":
            raise ValueError(f"expected <network>, got <{root.tag}>")
        if root.find("forward") is not None or root.find("ip") is not None:
            raise ValueError("a tenant network has no <forward> and no <ip>")
        bridge = root.find("bridge")
        return cls(name=root.findtext("name", ""), bridge=bridge.get("name", "") if bridge is not None else "")
