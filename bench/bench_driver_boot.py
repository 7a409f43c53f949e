"""Benchmark: boot of the probe guest through the driver (libvirt, TCG) vs raw QEMU; QEMU RSS.

Not a test. Figures:
- per machine type (pc, q35): seconds from ``define_and_start`` (virDomainCreateXML) to the
  sentinel on the console log, and to the domain being gone after the guest's power-off;
- raw ``qemu-system-x86_64`` with the same kernel + initramfs: to sentinel and to exit;
- VmRSS of an idle guest's QEMU, per memory size and per option set (ours; QEMU's default TCG
  translation cache; libvirt's default USB + memballoon).

    python -m bench.bench_driver_boot [--repeats N]

``bench_driver_boot()`` returns the figures for the lead's combined benchmark.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from vmworker.driver.config import ControllerConfig, MemBalloonConfig
from vmworker.driver.designer import DesignPolicy, design_domain
from vmworker.driver.guest import GuestState
from vmworker.driver.host import Host
from vmworker.driver.kernel import pvh_kernel_for
from vmworker.driver.probe import find_guest_kernel, wait_for_console_text
from vmworker.driver.probe_initramfs import build_probe_initramfs
from vmworker.driver.spec import DomainSpec

SENTINEL = "HYPERVM-BENCH-UP"
BENCH_PREFIX = "hvm-bench-"
POWEROFF_INIT = f"#!/bin/busybox sh\n/bin/busybox echo {SENTINEL}\n/bin/busybox poweroff -f\n"
IDLE_INIT = f"#!/bin/busybox sh\n/bin/busybox echo {SENTINEL}\nexec /bin/busybox sleep 3600\n"
RSS_SETTLE_S = 3.0


def _write_initramfs(work_dir: Path, name: str, init_script: str) -> Path:
    path = work_dir / name
    path.write_bytes(build_probe_initramfs(busybox=Path("/bin/busybox"), init_script=init_script, compress=False))
    path.chmod(0o644)
    return path


def _spec(work_dir: Path, kernel: Path, initrd: Path, memory_mib: int) -> DomainSpec:
    instance_id = str(uuid.uuid4())
    return DomainSpec(
        instance_id=instance_id,
        kernel=kernel,
        initrd=initrd,
        cmdline="quiet",
        vcpus=1,
        memory_mib=memory_mib,
        console_log=work_dir / f"{instance_id}.console.log",
        virt_type="qemu",
        metadata={"role": "bench"},
        name_prefix=BENCH_PREFIX,
    )


def boot_through_driver(host: Host, spec: DomainSpec, policy: DesignPolicy) -> tuple[float, float | None]:
    config = design_domain(spec, policy)
    started = time.monotonic()
    guest = host.define_and_start(config)
    try:
        to_sentinel = wait_for_console_text(spec.console_log, SENTINEL, timeout_s=60, poll_s=0.01)
        if to_sentinel is None:
            raise RuntimeError(f"no sentinel: {spec.console_log.read_text(errors='replace')[-500:]}")
        state = guest.wait_until_stopped(timeout_s=30, poll_s=0.02)
        to_gone = time.monotonic() - started if state == GuestState.ABSENT else None
        return to_sentinel, to_gone
    finally:
        guest.destroy()


def boot_raw_qemu(work_dir: Path, kernel: Path, initrd: Path, memory_mib: int) -> tuple[float, float]:
    console = work_dir / f"raw-{uuid.uuid4()}.log"
    command = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", str(memory_mib), "-nodefaults",
        "-display", "none", "-no-user-config", "-serial", f"file:{console}", "-kernel", str(kernel),
        "-initrd", str(initrd), "-append", "quiet console=ttyS0 panic=-1", "-no-reboot",
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        to_sentinel = wait_for_console_text(console, SENTINEL, timeout_s=60, poll_s=0.01)
        process.wait(timeout=60)
        return to_sentinel or float("nan"), time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def idle_rss_mib(
    host: Host, spec: DomainSpec, config_edit=None, policy: DesignPolicy | None = None
) -> dict[str, float] | None:
    config = design_domain(spec, policy or DesignPolicy())
    if config_edit is not None:
        config_edit(config)
    guest = host.define_and_start(config)
    try:
        if wait_for_console_text(spec.console_log, SENTINEL, timeout_s=60, until_stopped=guest) is None:
            return None
        time.sleep(RSS_SETTLE_S)
        pid = guest.qemu_pid()
        if pid is None:
            return None
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        # RssFile is mostly the kernel image QEMU maps read-only: page cache shared by all VMs.
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile")}
    finally:
        guest.destroy()


def _libvirt_default_devices(config) -> None:
    config.devices = [d for d in config.devices if not isinstance(d, ControllerConfig | MemBalloonConfig)]


def bench_driver_boot(repeats: int = 5) -> dict:
    kernel = find_guest_kernel()
    work_dir = Path(tempfile.mkdtemp(prefix=BENCH_PREFIX, dir="/tmp"))
    work_dir.chmod(0o755)
    host = Host("qemu:///system")
    figures: dict = {"boot": {}, "rss_mib": {}}
    try:
        poweroff_initrd = _write_initramfs(work_dir, "poweroff.cpio", POWEROFF_INIT)
        idle_initrd = _write_initramfs(work_dir, "idle.cpio", IDLE_INIT)
        pvh_kernel = pvh_kernel_for(kernel, work_dir / "kernels")
        kernels = {"bzImage": kernel, "pvh": pvh_kernel}
        runs: dict[str, list[tuple[float, float | None]]] = {}
        for _ in range(repeats):  # interleaved so background load hits every variant alike
            for kernel_name, kernel_path in kernels.items():
                for machine in ("pc", "q35"):
                    spec = _spec(work_dir, kernel_path, poweroff_initrd, 128)
                    sample = boot_through_driver(host, spec, DesignPolicy(machine_type=machine))
                    runs.setdefault(f"libvirt {kernel_name} {machine}", []).append(sample)
                sample = boot_raw_qemu(work_dir, kernel_path, poweroff_initrd, 128)
                runs.setdefault(f"raw-qemu {kernel_name} pc", []).append(sample)
        for variant, samples in runs.items():
            sentinel = [s for s, _ in samples]
            gone = [g for _, g in samples if g is not None]
            figures["boot"][variant] = {
                "to_sentinel_s": {"min": min(sentinel), "median": statistics.median(sentinel)},
                "to_gone_s": {"min": min(gone), "median": statistics.median(gone)} if gone else None,
            }
        rss_cases = {
            "ours-72MiB": (72, None, None),
            "ours-pvh-72MiB": (72, "pvh", None),
            "ours-pvh-128MiB": (128, "pvh", None),
            "ours-128MiB": (128, None, None),
            "ours-256MiB": (256, None, None),
            "qemu-default-tb-cache-128MiB": (128, None, DesignPolicy(tcg_tb_cache_mib=None)),
            "tb-cache-32-128MiB": (128, None, DesignPolicy(tcg_tb_cache_mib=32)),
            "tb-cache-16-128MiB": (128, None, DesignPolicy(tcg_tb_cache_mib=16)),
            "libvirt-default-usb-balloon-128MiB": (128, _libvirt_default_devices, None),
            "q35-128MiB": (128, None, DesignPolicy(machine_type="q35")),
        }
        for name, (memory_mib, edit, policy) in rss_cases.items():
            boot_kernel = pvh_kernel if edit == "pvh" else kernel
            edit = None if edit == "pvh" else edit
            spec = _spec(work_dir, boot_kernel, idle_initrd, memory_mib)
            figures["rss_mib"][name] = idle_rss_mib(host, spec, edit, policy)
        spec = _spec(work_dir, kernel, idle_initrd, 64)
        figures["rss_mib"]["ours-64MiB"] = idle_rss_mib(host, spec)  # None: does not boot
    finally:
        for guest in host.list_guests():
            if guest.name.startswith(BENCH_PREFIX):
                guest.destroy()
        host.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    figures = bench_driver_boot(parser.parse_args().repeats)
    for variant, boot in figures["boot"].items():
        sentinel, gone = boot["to_sentinel_s"], boot["to_gone_s"]
        gone_text = f"min {gone['min']:.2f} median {gone['median']:.2f}" if gone else "n/a"
        sentinel_text = f"min {sentinel['min']:.2f} median {sentinel['median']:.2f}"
        print(f"{variant:22s} to sentinel: {sentinel_text} s; to gone: {gone_text} s")
    for name, rss in figures["rss_mib"].items():
        if rss is None:
            print(f"RSS {name:36s} did not boot")
        else:
            print(f"RSS {name:36s} {rss['VmRSS']:.1f} MiB (anon {rss['RssAnon']:.1f}, file {rss['RssFile']:.1f})")


if __name__ == "__main__":
    main()
