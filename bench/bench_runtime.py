"""Benchmark of issue 3: the HyperVM runtime against raw QEMU, cold prepare, idle RSS.

Not a test: prints figures. In one invocation, on one machine state:

1. boot of the printing image through the runtime (warm image cache), to app exec (``boot()``
   returns) and to power-off (domain gone), versus raw ``qemu-system-x86_64`` started by hand
   with the same kernel, initramfs, rootfs image, config disk, devices, memory and accelerator
   (to the ``started`` record, and to QEMU's exit). Runs are interleaved; medians and the ratio.
   Target: runtime <= 1.15x raw QEMU.
2. cold prepare of a ~5 MB image (bench.bench_image_prepare). Target <= 1 s.
3. RSS of the QEMU process of an idle HyperVM (the SIGTERM-waiting image), at the smallest
   memory the guest kernel boots with and at 128 MiB. Target <= 60 MB.

    python -m bench.bench_runtime [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_image_prepare import bench_cold_prepare
from tests.support.oci_images import PRINTER, SIGTERM, build_and_push
from tests.support.registry import start_registry, stop_registry
from vmworker.driver.designer import DesignPolicy
from vmworker.guestinit.protocol import KERNEL_CMDLINE, GuestEvent, GuestLogParser
from vmworker.images import RegistryCredentials
from vmworker.runtime import ROOTFS_SERIAL, HyperVMRuntime, InstanceSpec, RuntimeSettings

MEMORY_MIB = 128
RSS_SETTLE_S = 3.0
TIMEOUT_S = 120


def _wait_gone(runtime: HyperVMRuntime, instance_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while runtime.host.lookup(instance_id) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the guest did not power off")
        time.sleep(0.01)


def boot_through_runtime(runtime: HyperVMRuntime, spec: InstanceSpec) -> tuple[float, float, dict]:
    started = time.monotonic()
    result = runtime.boot(spec)
    to_exec = time.monotonic() - started
    _wait_gone(runtime, spec.instance_id)
    return to_exec, time.monotonic() - started, result.timings_s


def raw_qemu_command(runtime: HyperVMRuntime, instance_dir: Path, work_dir: Path, memory_mib: int) -> list[str]:
    """The same guest as the runtime's domain, by hand: same files, devices and accelerator."""
    info = json.loads((instance_dir / "instance.json").read_text())
    fs_image = next(runtime.image_store.cache.images_dir.glob(info["image_digest"].split(":")[1] + "*"))
    tb_cache = DesignPolicy().tcg_tb_cache_mib
    accel = "tcg" + (f",tb-size={tb_cache}" if tb_cache else "") if info["virt_type"] == "qemu" else "kvm"
    return [
        "qemu-system-x86_64", "-accel", accel, "-machine", DesignPolicy().machine_type, "-m", str(memory_mib),
        "-smp", "1", "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-serial", f"file:{work_dir / 'console.log'}",
        "-kernel", str(runtime.boot_kernel()), "-initrd", str(runtime.initramfs()), "-append", KERNEL_CMDLINE,
        "-drive", f"file={fs_image},if=none,id=rootfs,format=raw,readonly=on",
        "-device", f"virtio-blk-pci,drive=rootfs,serial={ROOTFS_SERIAL}",
        "-drive", f"file={instance_dir / 'config.img'},if=none,id=config,format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=config,serial=hvm-config",
        "-device", "virtio-serial-pci,id=vser",
        "-chardev", f"file,id=log,path={work_dir / 'log'}",
        "-device", "virtserialport,bus=vser.0,chardev=log,name=io.hypervm.log",
        "-chardev", f"socket,id=control,path={work_dir / 'control.sock'},server=on,wait=off",
        "-device", "virtserialport,bus=vser.0,chardev=control,name=io.hypervm.control",
    ]  # fmt: skip


def boot_raw_qemu(command: list[str], work_dir: Path) -> tuple[float, float]:
    log_path = work_dir / "log"
    for stale in (log_path, work_dir / "control.sock", work_dir / "console.log"):
        stale.unlink(missing_ok=True)
    log_path.touch()
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parser = GuestLogParser()
        to_exec = None
        with open(log_path, "rb") as log:
            while to_exec is None and time.monotonic() - started < TIMEOUT_S:
                if any(isinstance(r, GuestEvent) and r.name == "started" for r in parser.feed(log.read())):
                    to_exec = time.monotonic() - started
                elif process.poll() is not None:
                    raise RuntimeError("raw QEMU exited before the app started")
                time.sleep(0.01)
        process.wait(timeout=TIMEOUT_S)
        return to_exec or float("nan"), time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def idle_rss_mib(runtime: HyperVMRuntime, spec: InstanceSpec) -> dict[str, float]:
    runtime.boot(spec)
    try:
        time.sleep(RSS_SETTLE_S)
        pid = runtime.host.lookup(spec.instance_id).qemu_pid()
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "RssAnon", "RssFile")}
    finally:
        runtime.remove(spec.instance_id)


def bench_runtime(repeats: int = 5) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="hypervm-bench-runtime-", dir="/var/tmp"))
    scratch.chmod(0o755)
    registry = start_registry(scratch / "registry")
    try:
        authfile = registry.write_authfile(scratch / "auth.json")
        layouts = scratch / "layouts"
        printer = build_and_push(PRINTER, cache_dir=layouts, registry=registry.host_port, authfile=authfile)
        sigterm = build_and_push(SIGTERM, cache_dir=layouts, registry=registry.host_port, authfile=authfile)
        credentials = RegistryCredentials(registry.username, registry.password)
        runtime = HyperVMRuntime(RuntimeSettings(state_dir=scratch / "state"))

        def printer_spec() -> InstanceSpec:
            return InstanceSpec(
                image=printer.reference, credentials=credentials, tls_verify=False, memory_mib=MEMORY_MIB
            )

        warmup = printer_spec()  # pulls, builds the initramfs and the PVH kernel, runs the probe
        boot_through_runtime(runtime, warmup)
        raw_dir = scratch / "raw"
        raw_dir.mkdir(mode=0o755)
        command = raw_qemu_command(runtime, runtime.instance_dir(warmup.instance_id), raw_dir, MEMORY_MIB)

        runtime_runs, raw_runs, phase_runs = [], [], []
        for _ in range(repeats):
            spec = printer_spec()
            to_exec, to_off, timings = boot_through_runtime(runtime, spec)
            runtime.remove(spec.instance_id)
            runtime_runs.append((to_exec, to_off))
            phase_runs.append(timings)
            raw_runs.append(boot_raw_qemu(command, raw_dir))

        def median(runs, index):
            return round(statistics.median(run[index] for run in runs), 3)

        boot = {
            "virt_type": runtime.virt_type(),
            "runtime_to_exec_s": median(runtime_runs, 0),
            "raw_qemu_to_exec_s": median(raw_runs, 0),
            "runtime_to_poweroff_s": median(runtime_runs, 1),
            "raw_qemu_to_poweroff_s": median(raw_runs, 1),
            "runtime_phases_median_s": {
                phase: round(statistics.median(run.get(phase, 0.0) for run in phase_runs), 3)
                for phase in ("cache", "initramfs", "define", "boot_to_init", "init_to_exec", "boot_to_exec")
            },
        }
        boot["ratio_to_exec"] = round(boot["runtime_to_exec_s"] / boot["raw_qemu_to_exec_s"], 3)
        boot["ratio_to_poweroff"] = round(boot["runtime_to_poweroff_s"] / boot["raw_qemu_to_poweroff_s"], 3)

        rss = {}
        for memory_mib in (runtime.settings.min_memory_mib, 128):
            spec = InstanceSpec(
                image=sigterm.reference, credentials=credentials, tls_verify=False, memory_mib=memory_mib
            )
            rss[f"{memory_mib}MiB"] = idle_rss_mib(runtime, spec)
        return {"boot": boot, "idle_qemu_rss_mib": rss, "repeats": repeats}
    finally:
        stop_registry(registry)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures = bench_runtime(args.repeats)
    figures["cold_prepare"] = bench_cold_prepare(repeats=3)
    figures["cold_prepare"].pop("runs", None)
    print(json.dumps(figures, indent=2))
    boot = figures["boot"]
    print(
        f"\nboot to exec: runtime {boot['runtime_to_exec_s']} s vs raw QEMU {boot['raw_qemu_to_exec_s']} s "
        f"= {boot['ratio_to_exec']}x (target <= 1.15x); to power-off {boot['ratio_to_poweroff']}x"
    )
    print(f"cold prepare (~5 MB): {figures['cold_prepare']['median_s']['total']:.3f} s (target <= 1 s)")
    for memory, rss in figures["idle_qemu_rss_mib"].items():
        print(
            f"idle QEMU RSS at {memory}: {rss['VmRSS']} MiB (anon {rss['RssAnon']}, file {rss['RssFile']}; "
            f"target <= 60 MB)"
        )


if __name__ == "__main__":
    main()
