"""Storage pool and volume XML (one small class per element, as vmworker.driver.config), and
the host-side ext4 format of a new volume."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

POOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VOLUME_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIB = 1024 * 1024
EXT4_MAGIC_OFFSET = 1024 + 0x38  # the superblock starts at 1 KiB; s_magic is at 0x38 in it
EXT4_MAGIC = b"\x53\xef"
MKFS_TIMEOUT_S = 120


class VolumeFormatError(Exception):
    pass


@dataclass(frozen=True)
class StoragePool:
    """A directory pool: its volumes are files in ``path``."""

    name: str
    path: Path

    def __post_init__(self) -> None:
        if not POOL_NAME_PATTERN.match(self.name):
            raise ValueError(f"pool name {self.name!r} must match {POOL_NAME_PATTERN.pattern}")
        if not Path(self.path).is_absolute():
            raise ValueError("a pool's path must be absolute")

    def to_xml(self) -> str:
        pool = ET.Element("pool", type="dir")
        ET.SubElement(pool, "name").text = self.name
        target = ET.SubElement(pool, "target")
        ET.SubElement(target, "path").text = str(self.path)
        return ET.tostring(pool, encoding="unicode")

    @classmethod
    def parse_str(cls, xml: str) -> StoragePool:
        """Refuses a same-named pool that is not a dir pool (someone else's, or a different design)."""
        root = ET.fromstring(xml)
        if root.tag != "pool" or root.get("type") != "dir":
            raise ValueError(f"pool is of type {root.get('type')!r}, not 'dir'")
        return cls(name=root.findtext("name", ""), path=Path(root.findtext("target/path", "")))


@dataclass(frozen=True)
class StorageVolume:
    """A raw volume of ``capacity_bytes``, allocated on write (a fresh sparse file)."""

    name: str
    capacity_bytes: int

    def __post_init__(self) -> None:
        if not VOLUME_NAME_PATTERN.match(self.name):
            raise ValueError(f"volume name {self.name!r} must match {VOLUME_NAME_PATTERN.pattern}")
        if self.capacity_bytes < MIB:
            raise ValueError("a volume holds at least 1 MiB")

    def to_xml(self) -> str:
        volume = ET.Element("volume")
        ET.SubElement(volume, "name").text = self.name
        ET.SubElement(volume, "capacity", unit="bytes").text = str(self.capacity_bytes)
        ET.SubElement(volume, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(volume, "target")
        ET.SubElement(target, "format", type="raw")
        permissions = ET.SubElement(target, "permissions")
        ET.SubElement(permissions, "mode").text = "0600"
        return ET.tostring(volume, encoding="unicode")

    @classmethod
    def parse_str(cls, xml: str) -> StorageVolume:
        root = ET.fromstring(xml)
        capacity = root.find("capacity")
        unit = capacity.get("unit", "bytes") if capacity is not None else "bytes"
        if unit != "bytes":
            raise ValueError(f"capacity in {unit!r}, expected bytes")
        return cls(name=root.findtext("name", ""), capacity_bytes=int(root.findtext("capacity", "0")))


def is_formatted(path: Path) -> bool:
    """An ext2/3/4 superblock at its place: the volume was formatted (by us) before."""
    with open(path, "rb") as device:
        device.seek(EXT4_MAGIC_OFFSET)
        return device.read(2) == EXT4_MAGIC


def _bounded_tool() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def volume_format(path: Path) -> None:
    """ext4 on a fresh volume, once. No discard pass (the file is new and sparse) and lazy inode
    tables, so a 1 GiB volume formats in well under a second; no reserved blocks (the volume is
    the app's alone). Refuses to format a volume that holds a file system already."""
    if is_formatted(path):
        return
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", str(path)],
        capture_output=True,
        text=True,
        timeout=MKFS_TIMEOUT_S,
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"},
        preexec_fn=_bounded_tool,
        check=False,
    )
    if result.returncode != 0:
        raise VolumeFormatError(f"mkfs.ext4 failed ({result.returncode}): {result.stderr.strip()[-500:]}")
