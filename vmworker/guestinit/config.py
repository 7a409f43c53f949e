"""The guest configuration and the config disk that carries it into the VM.

Contract with ``init/hvinit.c`` (``config_parse``): the runtime writes a raw disk
image attached as a virtio-blk disk with serial ``CONFIG_DISK_SERIAL``; the init
reads it as data and never hands any of it to a shell.

Layout, all integers little-endian, the file padded with zeros to 4 KiB::

    "HVMCONF\\0"  u32 version (=1)  u32 payload_len  payload  u32 crc32(payload)
    payload = record*    record = u16 tag, u32 len, len bytes of UTF-8 (no NUL)

Tags (repeatable ones marked *): 1 hostname, 2 argv*, 3 env*, 4 working_dir,
5 user, 6 rootfs_serial, 7 rootfs_type, 8 overlay_size_mib, 9 stop_grace_s,
10 net ip_cidr, 11 net gateway, 12 net mac, 13 net nameserver*, 14 tenant net mac,
15 tenant net ip_cidr (both or neither: a second NIC, found by MAC, no route), 16 volume*
("<serial> <name>": an ext4 disk found by serial, mounted at /mnt/mesos/sandbox/<name>, the
name one path segment). Numbers are
decimal text. The init rejects an unknown tag, a repeated single tag, a bad
checksum or any length that overruns: it reports ``error config: ...`` and
powers off (exit 125).
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DISK_SERIAL = "hvm-config"
CONFIG_MAGIC = b"HVMCONF\x00"
CONFIG_VERSION = 1
CONFIG_MAX_PAYLOAD_BYTES = 1024 * 1024
CONFIG_MAX_LIST_ITEMS = 4096
_HEADER = struct.Struct("<8sII")
_RECORD_HEADER = struct.Struct("<HI")
_SECTOR_ALIGN_BYTES = 4096
# virtio-blk serials are at most 20 bytes (VIRTIO_BLK_ID_BYTES).
_SERIAL_RE = re.compile(r"^[A-Za-z0-9._-]{1,20}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

TAG_HOSTNAME = 1
TAG_ARGV = 2
TAG_ENV = 3
TAG_WORKING_DIR = 4
TAG_USER = 5
TAG_ROOTFS_SERIAL = 6
TAG_ROOTFS_TYPE = 7
TAG_OVERLAY_SIZE_MIB = 8
TAG_STOP_GRACE_S = 9
TAG_NET_IP_CIDR = 10
TAG_NET_GATEWAY = 11
TAG_NET_MAC = 12
TAG_NET_NAMESERVER = 13
TAG_TENANT_NET_MAC = 14
TAG_TENANT_NET_IP_CIDR = 15
TAG_VOLUME = 16
_LAST_TAG = TAG_VOLUME
_REPEATABLE_TAGS = frozenset({TAG_ARGV, TAG_ENV, TAG_NET_NAMESERVER, TAG_VOLUME})
MESOS_SANDBOX = "/mnt/mesos/sandbox"  # where volumes are mounted, as Marathon with Docker has it


class ConfigDiskError(ValueError):
    """A GuestConfig that cannot be delivered, or a config image that does not parse."""


@dataclass(frozen=True)
class GuestNetwork:
    """One interface. For QEMU user-mode networking: 10.0.2.15/24 via 10.0.2.2."""

    ip_cidr: str
    gateway: str | None = None
    mac: str | None = None  # picks the interface; None means eth0
    nameservers: tuple[str, ...] = ()  # /etc/resolv.conf is written only when given


@dataclass(frozen=True)
class GuestTenantInterface:
    """The NIC on the tenant network (vmworker.network): found by its MAC, given its address and
    prefix; no gateway (the segment has no uplink), so only its own subnet is routed through it."""

    mac: str
    ip_cidr: str


@dataclass(frozen=True)
class GuestVolume:
    """A persistent volume: the writable ext4 disk with ``serial``, mounted at MESOS_SANDBOX/``name``."""

    serial: str
    name: str


@dataclass(frozen=True)
class GuestConfig:
    """Everything the guest init needs, delivered as data on the config disk."""

    hostname: str
    argv: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    user: str  # "uid[:gid]" or "name[:group]", resolved in the guest's /etc/passwd
    rootfs_serial: str
    rootfs_type: str  # "erofs" | "ext4"
    overlay_size_mib: int
    stop_grace_s: int
    network: GuestNetwork | None = field(default=None)
    tenant_interface: GuestTenantInterface | None = field(default=None)
    volumes: tuple[GuestVolume, ...] = ()


def _validate(config: GuestConfig) -> None:
    def text(name: str, value: str) -> None:
        if not isinstance(value, str) or "\x00" in value:
            raise ConfigDiskError(f"{name} must be a string without NUL bytes")

    if config.hostname and not _HOSTNAME_RE.match(config.hostname):
        raise ConfigDiskError(f"hostname {config.hostname!r} is not a valid host name")
    if not config.argv or not config.argv[0]:
        raise ConfigDiskError("argv must name a program")
    if len(config.argv) > CONFIG_MAX_LIST_ITEMS or len(config.env) > CONFIG_MAX_LIST_ITEMS:
        raise ConfigDiskError(f"argv and env are limited to {CONFIG_MAX_LIST_ITEMS} items")
    for item in config.argv:
        text("argv items", item)
    for item in config.env:
        text("env items", item)
        if "=" not in item or item.startswith("="):
            raise ConfigDiskError(f"env item {item!r} is not NAME=VALUE")
    text("working_dir", config.working_dir)
    if config.working_dir and not config.working_dir.startswith("/"):
        raise ConfigDiskError("working_dir must be absolute")
    text("user", config.user)
    if not _SERIAL_RE.match(config.rootfs_serial):
        raise ConfigDiskError("rootfs_serial must be 1-20 characters of [A-Za-z0-9._-]")
    if config.rootfs_type not in ("erofs", "ext4"):
        raise ConfigDiskError(f"rootfs_type {config.rootfs_type!r} is not erofs or ext4")
    if not 1 <= config.overlay_size_mib <= 1024 * 1024:
        raise ConfigDiskError("overlay_size_mib must be between 1 and 1048576")
    if not 0 <= config.stop_grace_s <= 86400:
        raise ConfigDiskError("stop_grace_s must be between 0 and 86400")
    network = config.network
    if network is not None:
        try:
            ipaddress.IPv4Interface(network.ip_cidr)
            if network.gateway is not None:
                ipaddress.IPv4Address(network.gateway)
            for server in network.nameservers:
                ipaddress.ip_address(server)
        except ValueError as exc:
            raise ConfigDiskError(f"network: {exc}") from exc
        if network.mac is not None and not _MAC_RE.match(network.mac):
            raise ConfigDiskError("network mac must be lower-case aa:bb:cc:dd:ee:ff")
    tenant = config.tenant_interface
    if tenant is not None:
        try:
            ipaddress.IPv4Interface(tenant.ip_cidr)
        except ValueError as exc:
            raise ConfigDiskError(f"tenant network: {exc}") from exc
        if not _MAC_RE.match(tenant.mac):
            raise ConfigDiskError("tenant network mac must be lower-case aa:bb:cc:dd:ee:ff")
        if network is not None and network.mac == tenant.mac:
            raise ConfigDiskError("the tenant network NIC and the user network NIC need different MACs")
    for volume in config.volumes:
        if not _SERIAL_RE.match(volume.serial) or volume.serial == config.rootfs_serial:
            raise ConfigDiskError("a volume serial must be 1-20 characters of [A-Za-z0-9._-], not the rootfs one")
        text("volume name", volume.name)
        if not volume.name or "/" in volume.name or volume.name in (".", "..") or len(volume.name.encode()) > 255:
            raise ConfigDiskError(f"volume name {volume.name!r} must be one path segment (no '/', not . or ..)")
    if len({volume.serial for volume in config.volumes}) != len(config.volumes):
        raise ConfigDiskError("two volumes with one serial")
    if len({volume.name for volume in config.volumes}) != len(config.volumes):
        raise ConfigDiskError("two volumes at one path")


def _records(config: GuestConfig) -> list[tuple[int, str]]:
    records: list[tuple[int, str]] = [(TAG_HOSTNAME, config.hostname)]
    records += [(TAG_ARGV, item) for item in config.argv]
    records += [(TAG_ENV, item) for item in config.env]
    records += [
        (TAG_WORKING_DIR, config.working_dir),
        (TAG_USER, config.user),
        (TAG_ROOTFS_SERIAL, config.rootfs_serial),
        (TAG_ROOTFS_TYPE, config.rootfs_type),
        (TAG_OVERLAY_SIZE_MIB, str(config.overlay_size_mib)),
        (TAG_STOP_GRACE_S, str(config.stop_grace_s)),
    ]
    network = config.network
    if network is not None:
        records.append((TAG_NET_IP_CIDR, network.ip_cidr))
        if network.gateway is not None:
            records.append((TAG_NET_GATEWAY, network.gateway))
        if network.mac is not None:
            records.append((TAG_NET_MAC, network.mac))
        records += [(TAG_NET_NAMESERVER, server) for server in network.nameservers]
    if config.tenant_interface is not None:
        records += [
            (TAG_TENANT_NET_MAC, config.tenant_interface.mac),
            (TAG_TENANT_NET_IP_CIDR, config.tenant_interface.ip_cidr),
        ]
    records += [(TAG_VOLUME, f"{volume.serial} {volume.name}") for volume in config.volumes]
    return records


def encode_config(config: GuestConfig) -> bytes:
    """The config disk's bytes (already padded to a 4 KiB multiple)."""
    _validate(config)
    payload = b"".join(
        _RECORD_HEADER.pack(tag, len(raw)) + raw
        for tag, raw in ((tag, value.encode("utf-8")) for tag, value in _records(config))
    )
    if len(payload) > CONFIG_MAX_PAYLOAD_BYTES:
        raise ConfigDiskError(f"config is {len(payload)} bytes, over the 1 MiB limit")
    image = _HEADER.pack(CONFIG_MAGIC, CONFIG_VERSION, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload))
    padding = -len(image) % _SECTOR_ALIGN_BYTES
    return image + b"\x00" * padding


def write_config_disk(config: GuestConfig, path: Path) -> None:
    """Writes the config disk image atomically (attach it read-only, serial CONFIG_DISK_SERIAL)."""
    image = encode_config(config)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp_path, "wb") as handle:
        handle.write(image)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)


def decode_config(image: bytes) -> GuestConfig:
    """Parses a config image the way the init does (used by tests and diagnostics)."""
    if len(image) < _HEADER.size + 4:
        raise ConfigDiskError("config: disk too small")
    magic, version, payload_len = _HEADER.unpack_from(image)
    if magic != CONFIG_MAGIC:
        raise ConfigDiskError("config: bad magic")
    if version != CONFIG_VERSION:
        raise ConfigDiskError(f"config: unsupported version {version}")
    if payload_len > CONFIG_MAX_PAYLOAD_BYTES or payload_len > len(image) - _HEADER.size - 4:
        raise ConfigDiskError("config: truncated")
    payload = image[_HEADER.size : _HEADER.size + payload_len]
    (checksum,) = struct.unpack_from("<I", image, _HEADER.size + payload_len)
    if zlib.crc32(payload) != checksum:
        raise ConfigDiskError("config: checksum mismatch")
    values: dict[int, list[str]] = {}
    pos = 0
    while pos < payload_len:
        if payload_len - pos < _RECORD_HEADER.size:
            raise ConfigDiskError("config: truncated record header")
        tag, value_len = _RECORD_HEADER.unpack_from(payload, pos)
        pos += _RECORD_HEADER.size
        if value_len > payload_len - pos:
            raise ConfigDiskError(f"config: record {tag} overruns the payload")
        raw = payload[pos : pos + value_len]
        pos += value_len
        if not TAG_HOSTNAME <= tag <= _LAST_TAG:
            raise ConfigDiskError(f"config: unknown record tag {tag}")
        if b"\x00" in raw:
            raise ConfigDiskError(f"config: record {tag} contains a NUL byte")
        if tag in values and tag not in _REPEATABLE_TAGS:
            raise ConfigDiskError(f"config: record {tag} given twice")
        values.setdefault(tag, []).append(raw.decode("utf-8"))

    def single(tag: int) -> str | None:
        return values[tag][0] if tag in values else None

    network = None
    if TAG_NET_IP_CIDR in values:
        network = GuestNetwork(
            ip_cidr=values[TAG_NET_IP_CIDR][0],
            gateway=single(TAG_NET_GATEWAY),
            mac=single(TAG_NET_MAC),
            nameservers=tuple(values.get(TAG_NET_NAMESERVER, ())),
        )
    tenant_interface = None
    if TAG_TENANT_NET_MAC in values or TAG_TENANT_NET_IP_CIDR in values:
        if TAG_TENANT_NET_MAC not in values or TAG_TENANT_NET_IP_CIDR not in values:
            raise ConfigDiskError("config: tenant network needs both mac and ip_cidr")
        tenant_interface = GuestTenantInterface(
            mac=values[TAG_TENANT_NET_MAC][0], ip_cidr=values[TAG_TENANT_NET_IP_CIDR][0]
        )
    try:
        config = GuestConfig(
            hostname=single(TAG_HOSTNAME) or "",
            argv=tuple(values.get(TAG_ARGV, ())),
            env=tuple(values.get(TAG_ENV, ())),
            working_dir=single(TAG_WORKING_DIR) or "",
            user=single(TAG_USER) or "",
            rootfs_serial=single(TAG_ROOTFS_SERIAL) or "",
            rootfs_type=single(TAG_ROOTFS_TYPE) or "",
            overlay_size_mib=int(single(TAG_OVERLAY_SIZE_MIB) or "0"),
            stop_grace_s=int(single(TAG_STOP_GRACE_S) or "-1"),
            network=network,
            tenant_interface=tenant_interface,
            volumes=tuple(
                GuestVolume(serial=serial, name=name)
                for serial, _, name in (value.partition(" ") for value in values.get(TAG_VOLUME, ()))
            ),
        )
    except ValueError as exc:
        raise ConfigDiskError(f"config: {exc}") from exc
    _validate(config)
    return config
