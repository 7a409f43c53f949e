"""What the benches read of a running VM's QEMU process (by its libvirt pid file): RSS and CPU time."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_pid(domain_name: str) -> str:
    return Path(f"/run/libvirt/qemu/{domain_name}.pid").read_text().strip()


def qemu_rss_mib(domain_name: str) -> float:
    for line in Path(f"/proc/{qemu_pid(domain_name)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def qemu_cpu_s(domain_name: str) -> float:
    """User + system CPU seconds of the domain's QEMU so far."""
    fields = Path(f"/proc/{qemu_pid(domain_name)}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
