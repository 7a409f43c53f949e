"""Guest: one of our domains, addressed by instance UUID.

Contract: a Guest holds no libvirt object. Each call resolves the domain through its Host (so a
Guest stays valid across a reconnect) and every failure arrives as one of ``driver.errors``.
Operations that end a domain are idempotent: destroying or undefining a domain that is already
stopped or gone succeeds. ``state`` is ``absent`` once a transient domain has gone away (what
``on_poweroff=destroy`` does when the guest powers itself off).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from vmworker.driver.config import HYPERVM_NAMESPACE, DomainConfig, InstanceMetadataConfig
from vmworker.driver.errors import DomainNotFound

if TYPE_CHECKING:
    from vmworker.driver.host import Host

QEMU_SYSTEM_PID_DIR = Path("/run/libvirt/qemu")


class GuestState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"  # defined (persistent) but not running
    ABSENT = "absent"  # no such domain (a transient one that stopped, or never made)


STOPPED_STATES = frozenset({GuestState.SHUTOFF, GuestState.ABSENT})


@dataclass(frozen=True)
class GuestStats:
    """What libvirt measures of a running domain from the host side: the CPU time its vCPUs used
    since it started and the memory its QEMU process holds. Nothing here is reported by the guest
    (no balloon driver in a HyperVM), so a guest can only move these figures by using resources.
    ``rss_bytes`` is None where the driver does not measure it (libvirt's test driver)."""

    cpu_time_ns: int
    vcpus: int
    memory_bytes: int  # the domain's memory (its configured size)
    rss_bytes: int | None


class Guest:
    def __init__(self, host: Host, *, instance_id: str, name: str) -> None:
        self._host = host
        self.instance_id = instance_id
        self.name = name

    def __repr__(self) -> str:
        return f"Guest({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Guest) and (self._host, self.instance_id) == (
            other._host,
            other.instance_id,
        )

    def __hash__(self) -> int:
        return hash(self.instance_id)

    @property
    def state(self) -> GuestState:
        return self._host._domain_state(self.instance_id)

    @property
    def is_persistent(self) -> bool:
        return bool(self._host._domain_call(self.instance_id, "read", lambda d: d.isPersistent()))

    def destroy(self) -> None:
        """Hard power-off now. A stopped or vanished domain is already destroyed."""
        try:
            self._host._domain_call(self.instance_id, "destroy", lambda d: d.destroy(), inactive_is_done=True)
        except DomainNotFound:
            pass

    def undefine(self) -> None:
        """Forget a persistent domain's definition (a transient one has none to forget)."""
        try:
            self._host._domain_call(
                self.instance_id,
                "undefine",
                lambda d: d.undefine() if d.isPersistent() else None,
            )
        except DomainNotFound:
            pass

    def config(self) -> DomainConfig:
        xml = self._host._domain_call(self.instance_id, "read XML of", lambda d: d.XMLDesc(0))
        return DomainConfig.parse_str(xml)

    def metadata(self) -> dict[str, str]:
        xml = self._host._domain_call(
            self.instance_id,
            "read metadata of",
            lambda d: d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, HYPERVM_NAMESPACE, 0),
        )
        return InstanceMetadataConfig.parse_str(xml).values

    def stats(self) -> GuestStats | None:
        """The domain's figures now; None when it is not running (or gone)."""
        return self._host._guest_stats_of(self.instance_id)

    def qemu_pid(self) -> int | None:
        """The QEMU process of a running domain on a local ``qemu:///system``, else None."""
        if not self._host.uri.startswith("qemu:///system"):
            return None
        try:
            pid = int((QEMU_SYSTEM_PID_DIR / f"{self.name}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # The pid file may outlive its process and the pid be reused: check it is our QEMU.
        return pid if f"guest={self.name}".encode() in cmdline else None

    def wait_until_stopped(self, *, timeout_s: float, poll_s: float = 0.05) -> GuestState:
        """Poll until shut off or gone; return the last state seen (running on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state
            if state in STOPPED_STATES or time.monotonic() >= deadline:
                return state
            time.sleep(poll_s)
