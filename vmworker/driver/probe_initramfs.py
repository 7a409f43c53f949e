"""A tiny, deterministic initramfs for boot probes and driver tests.

Contract: the archive is a newc cpio holding busybox-static as ``/bin/busybox``, a ``/dev/console``
node and an ``/init`` shell script. The default script prints ``sentinel`` on the console (the
serial port when the cmdline says ``console=ttyS0``) and powers the VM off at once, so a boot is
"proved" by the sentinel appearing in the console log and the domain going away.

This is not the product's guest init (that is ``vmworker.guestinit``); it exists so the driver
can probe a host and test itself without depending on it. Same inputs give the same bytes: every
mtime is 0 and entries are written in the order given.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass, field
from pathlib import Path

NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


@dataclass
class NewcArchive:
    """Writer for the SVR4 "newc" cpio format the kernel unpacks as an initramfs."""

    _buffer: io.BytesIO = field(default_factory=io.BytesIO)
    _next_inode: int = 1
    _closed: bool = False

    def add_directory(self, name: str, *, mode: int = 0o755) -> None:
        self._add_entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, name: str, data: bytes, *, mode: int = 0o644) -> None:
        self._add_entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._add_entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, *, major: int, minor: int, mode: int = 0o600) -> None:
        self._add_entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def to_bytes(self) -> bytes:
        if not self._closed:
            self._add_entry(NEWC_TRAILER, 0, b"", inode=0, nlink=1)
            self._closed = True
        return self._buffer.getvalue()

    def _add_entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        inode: int | None = None,
    ) -> None:
        if self._closed:
            raise ValueError("archive already finished")
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
        encoded_name = name.lstrip("/").encode() + b"\0"
        fields = (
            inode,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime: fixed so the archive is reproducible
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded_name),
            0,  # check
        )
        header = NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
        self._buffer.write(header + encoded_name)
        self._pad_to_four()
        self._buffer.write(data)
        self._pad_to_four()

    def _pad_to_four(self) -> None:
        remainder = self._buffer.tell() % 4
        if remainder:
            self._buffer.write(b"\0" * (4 - remainder))


DEFAULT_SENTINEL = "HYPERVM-PROBE-OK"


def poweroff_init_script(sentinel: str) -> str:
    """The probe's /init: say the sentinel, then power off without syncing anything."""
    return f"#!/bin/busybox sh\n/bin/busybox echo {sentinel}\n/bin/busybox poweroff -f\n"


def build_probe_initramfs(
    *,
    busybox: Path,
    init_script: str,
    modules: tuple[Path, ...] = (),
    extra_files: dict[str, bytes] | None = None,
    compress: bool = True,
) -> bytes:
    """Return initramfs bytes: busybox, ``init_script`` as /init, modules in /lib/modules.

    ``modules`` are copied flat to ``/lib/modules/<basename>`` in the order given; the script must
    insmod them in dependency (modules.dep) order itself.
    """
    archive = NewcArchive()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        archive.add_directory(directory)
    archive.add_char_device("dev/console", major=5, minor=1)
    archive.add_char_device("dev/null", major=1, minor=3, mode=0o666)
    archive.add_file("bin/busybox", busybox.read_bytes(), mode=0o755)
    archive.add_symlink("bin/sh", "busybox")
    for module in modules:
        archive.add_file(f"lib/modules/{module.name}", module.read_bytes())
    for name, data in sorted((extra_files or {}).items()):
        archive.add_file(name, data)
    archive.add_file("init", init_script.encode(), mode=0o755)
    raw = archive.to_bytes()
    if not compress:
        return raw
    # mtime=0 keeps the gzip header reproducible too.
    return gzip.compress(raw, compresslevel=6, mtime=0)
