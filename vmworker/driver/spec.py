"""What the runtime asks the driver for: plain, frozen values (no libvirt, no Django).

Contract (shared with the runtime, fixed in the issue-3 brief): a ``DomainSpec`` fully describes
one HyperVM; ``designer.design_domain`` turns it into libvirt config objects, making every
policy decision on the way. The instance UUID is also the libvirt domain UUID and, with
``name_prefix``, the domain name, so the same instance can never become two domains.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

VIRT_TYPES = ("kvm", "qemu")
CHANNEL_KINDS = ("file", "unix")
DEFAULT_NAME_PREFIX = "hvm-"
METADATA_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    serial: str  # the guest finds the disk by this, never by /dev/vdX order
    readonly: bool
    format: str = "raw"


@dataclass(frozen=True)
class ChannelSpec:
    """A virtio-serial port. ``file``: the host appends what the guest writes; ``unix``: libvirt
    listens on ``path`` and the host connects to talk both ways."""

    name: str
    path: Path
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in CHANNEL_KINDS:
            raise ValueError(f"channel kind must be one of {CHANNEL_KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class PortForward:
    host_ip: str
    host_port: int
    guest_port: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")
        for port in (self.host_port, self.guest_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port out of range: {port}")


@dataclass(frozen=True)
class InterfaceSpec:
    """A NIC on a libvirt network (a tenant network, vmworker.network): the guest finds it by ``mac``."""

    network: str
    mac: str

    def __post_init__(self) -> None:
        if not MAC_PATTERN.match(self.mac):
            raise ValueError(f"mac {self.mac!r} must be lower-case aa:bb:cc:dd:ee:ff")
        if not self.network:
            raise ValueError("an interface needs a network name")


@dataclass(frozen=True)
class DomainSpec:
    instance_id: str
    kernel: Path
    initrd: Path
    cmdline: str
    vcpus: int
    memory_mib: int
    console_log: Path
    virt_type: str
    cpu_quota_pct: int | None = None  # of ONE host cpu per vcpu period; None = unlimited
    disks: tuple[DiskSpec, ...] = ()
    channels: tuple[ChannelSpec, ...] = ()
    port_forwards: tuple[PortForward, ...] = ()
    user_net_mac: str | None = None  # the published-ports NIC's MAC; None: QEMU picks one
    tcg_tb_cache_mib: int | None = None  # TCG: this domain's translation cache; None: the policy's
    user_net: bool = False  # the user-net NIC even without forwards (a pooled VM's, added at claim)
    interfaces: tuple[InterfaceSpec, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    name_prefix: str = DEFAULT_NAME_PREFIX

    def __post_init__(self) -> None:
        # Normalised so "ABC..." and "abc..." cannot name two domains.
        object.__setattr__(self, "instance_id", str(uuid.UUID(self.instance_id)))
        if self.virt_type not in VIRT_TYPES:
            raise ValueError(f"virt_type must be one of {VIRT_TYPES}, not {self.virt_type!r}")
        if self.vcpus < 1:
            raise ValueError("vcpus must be >= 1")
        if self.memory_mib < 16:
            raise ValueError("memory_mib must be >= 16")
        if self.cpu_quota_pct is not None and self.cpu_quota_pct < 1:
            raise ValueError("cpu_quota_pct must be >= 1")
        if self.user_net_mac is not None and not MAC_PATTERN.match(self.user_net_mac):
            raise ValueError(f"user_net_mac {self.user_net_mac!r} must be lower-case aa:bb:cc:dd:ee:ff")
        for key in self.metadata:
            if not METADATA_KEY_PATTERN.match(key):
                raise ValueError(f"metadata key {key!r} must match {METADATA_KEY_PATTERN.pattern}")

    @property
    def domain_name(self) -> str:
        return f"{self.name_prefix}{self.instance_id}"
