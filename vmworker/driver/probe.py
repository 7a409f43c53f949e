"""Boot probe: decide per host whether HyperVMs run with ``kvm`` or TCG (``qemu``).

Contract: ``probe_virt_type`` boots a tiny guest (the real guest kernel + an initramfs that
prints a sentinel on the serial console and powers off) through the same libvirt ``Host`` the
worker uses, first with ``kvm`` when ``/dev/kvm`` exists and libvirt offers it, then with
``qemu``; the first candidate whose sentinel reaches the console log within ``timeout_s`` wins.
Each probe domain is named ``hvm-probe-<uuid>`` and is destroyed whatever happens, so a hung
KVM QEMU never outlives its attempt. ``force`` skips probing (a setting on hosts where the
answer is known). The result records every attempt and why it failed, for the host record.

Why a probe and not just "/dev/kvm exists": nested hosts (dev/CI) expose /dev/kvm but QEMU
hangs or aborts booting a stock kernel with it.
"""

from __future__ import annotations

import glob
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vmworker.driver.errors import DriverError
from vmworker.driver.guest import STOPPED_STATES
from vmworker.driver.probe_initramfs import (
    DEFAULT_SENTINEL,
    build_probe_initramfs,
    poweroff_init_script,
)
from vmworker.driver.spec import VIRT_TYPES, DomainSpec

logger = logging.getLogger(__name__)

PROBE_NAME_PREFIX = "hvm-probe-"
DEFAULT_KERNEL_GLOB = "/boot/vmlinuz-*-cloud-amd64"
KVM_DEVICE = Path("/dev/kvm")
# The cloud kernel does not get past its decompressor with 64 MiB; 128 leaves margin.
PROBE_MEMORY_MIB = 128
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")


@dataclass(frozen=True)
class ProbeAttempt:
    virt_type: str
    succeeded: bool
    boot_s: float | None  # create call -> sentinel on the console
    reason: str
    domain_name: str | None = None  # the probe domain booted (destroyed since), if any


@dataclass(frozen=True)
class ProbeResult:
    virt_type: str
    boot_s: float | None
    forced: bool
    attempts: tuple[ProbeAttempt, ...]


class ProbeFailed(DriverError):
    """No candidate booted the probe guest; ``attempts`` says why for each."""

    def __init__(self, attempts: tuple[ProbeAttempt, ...]) -> None:
        self.attempts = attempts
        summary = "; ".join(f"{attempt.virt_type}: {attempt.reason}" for attempt in attempts)
        super().__init__(f"no virt type could boot the probe guest ({summary})")


def find_guest_kernel(pattern: str = DEFAULT_KERNEL_GLOB) -> Path:
    candidates = sorted(glob.glob(pattern))
    if not candidates:
        raise FileNotFoundError(f"no guest kernel matches {pattern}")
    return Path(candidates[-1])


def probe_virt_type(
    host,
    *,
    kernel: Path,
    work_dir: Path,
    busybox: Path = Path("/bin/busybox"),
    force: str | None = None,
    timeout_s: float = 10.0,
    kvm_device: Path = KVM_DEVICE,
    candidates: tuple[str, ...] = ("kvm", "qemu"),
) -> ProbeResult:
    """``host`` is a ``Host`` (or the fake). ``work_dir`` must be readable by QEMU's user."""
    if force is not None:
        if force not in VIRT_TYPES:
            raise ValueError(f"force must be one of {VIRT_TYPES}, not {force!r}")
        return ProbeResult(virt_type=force, boot_s=None, forced=True, attempts=())
    work_dir.mkdir(parents=True, exist_ok=True)
    initrd = work_dir / "probe-initramfs.cpio"
    initrd.write_bytes(
        build_probe_initramfs(busybox=busybox, init_script=poweroff_init_script(DEFAULT_SENTINEL), compress=False)
    )
    initrd.chmod(0o644)
    offered = host.capabilities().virt_types
    attempts: list[ProbeAttempt] = []
    for virt_type in candidates:
        if virt_type == "kvm" and not kvm_device.exists():
            attempts.append(ProbeAttempt("kvm", False, None, f"{kvm_device} does not exist"))
            continue
        if virt_type not in offered:
            attempts.append(ProbeAttempt(virt_type, False, None, "libvirt does not offer it"))
            continue
        attempt = _boot_probe_guest(
            host, virt_type=virt_type, kernel=kernel, initrd=initrd, work_dir=work_dir, timeout_s=timeout_s
        )
        attempts.append(attempt)
        logger.info(
            "driver.probe_attempt",
            extra={"virt_type": virt_type, "succeeded": attempt.succeeded, "reason": attempt.reason},
        )
        if attempt.succeeded:
            return ProbeResult(virt_type=virt_type, boot_s=attempt.boot_s, forced=False, attempts=tuple(attempts))
    raise ProbeFailed(tuple(attempts))


def _boot_probe_guest(
    host, *, virt_type: str, kernel: Path, initrd: Path, work_dir: Path, timeout_s: float
) -> ProbeAttempt:
    instance_id = str(uuid.uuid4())
    console_log = work_dir / f"probe-{virt_type}-{instance_id}.console.log"
    spec = DomainSpec(
        instance_id=instance_id,
        kernel=kernel,
        initrd=initrd,
        cmdline="quiet",
        vcpus=1,
        memory_mib=PROBE_MEMORY_MIB,
        console_log=console_log,
        virt_type=virt_type,
        metadata={"role": "probe"},
        name_prefix=PROBE_NAME_PREFIX,
    )
    guest = None
    started = time.monotonic()
    try:
        guest = host.define_and_start(spec)
        boot_s = wait_for_console_text(console_log, DEFAULT_SENTINEL, timeout_s=timeout_s, until_stopped=guest)
        if boot_s is not None:
            return ProbeAttempt(virt_type, True, boot_s, "sentinel seen on the console", spec.domain_name)
        if guest.state in STOPPED_STATES:
            reason = "guest stopped before the sentinel"
        else:
            reason = f"no sentinel within {timeout_s:g} s"
        reason += _diagnostics(console_log, spec.domain_name)
        return ProbeAttempt(virt_type, False, None, reason, spec.domain_name)
    except DriverError as error:
        return ProbeAttempt(virt_type, False, None, f"{error}", spec.domain_name)
    finally:
        if guest is not None:
            guest.destroy()  # a hung KVM QEMU must not outlive its attempt
        logger.debug("driver.probe_done", extra={"s": time.monotonic() - started})
        console_log.unlink(missing_ok=True)


def wait_for_console_text(
    path: Path, text: str, *, timeout_s: float, poll_s: float = 0.02, until_stopped=None
) -> float | None:
    """Seconds until ``text`` is in the file; None on timeout or once ``until_stopped`` (a
    guest) has stopped without printing it. Bounded: at most ``timeout_s`` of polling."""
    needle = text.encode()
    start = time.monotonic()
    checks = 0
    while time.monotonic() - start < timeout_s:
        if _file_contains(path, needle):
            return time.monotonic() - start
        checks += 1
        # Asking libvirt every poll would cost more than the file read; every 10th is enough.
        if until_stopped is not None and checks % 10 == 0 and until_stopped.state in STOPPED_STATES:
            # It may have printed and powered off between our read and the state check.
            return time.monotonic() - start if _file_contains(path, needle) else None
        time.sleep(poll_s)
    return None


def _file_contains(path: Path, needle: bytes) -> bool:
    try:
        return needle in path.read_bytes()
    except FileNotFoundError:
        return False


def _diagnostics(console_log: Path, domain_name: str) -> str:
    parts = []
    try:
        console_tail = console_log.read_bytes()[-300:].decode(errors="replace").strip()
        if console_tail:
            parts.append(f"console: {console_tail!r}")
    except FileNotFoundError:
        pass
    try:
        qemu_lines = (QEMU_LOG_DIR / f"{domain_name}.log").read_text(errors="replace").splitlines()
        errors = [line for line in qemu_lines[-20:] if "error" in line.lower() or "qemu-system" in line]
        if errors:
            parts.append(f"qemu: {errors[-1][:300]}")
    except OSError:
        pass
    return (" (" + "; ".join(parts) + ")") if parts else ""
