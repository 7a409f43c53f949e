"""Benchmark of issue 11's idle cost: what KSM (kernel same-page merging) saves on a host's pool of
paused blank HyperVMs, and what it costs.

Not a test: prints figures. No portal, no database: the host runtime boots ``--vms`` blank VMs
of 1 vCPU / 128 MiB into a pool of its own (vmworker.warm_pool, a scratch state dir), then, in
the same run:

1. baseline: the QEMU RSS of each paused VM and the host's MemAvailable, KSM as found (off);
2. KSM on (``/sys/kernel/mm/ksm/run=1``, QEMU marks guest RAM mergeable by default,
   ``mem-merge=on``), scanning fast (``--pages-to-scan`` per ``--sleep-ms``) until two full
   scans are done: pages shared / sharing, the memory saved per VM (sharing x 4 KiB / VMs) and
   MemAvailable again; the CPU seconds ksmd spent for it;
3. the QEMU CPU of one pooled VM resumed after the merge against one resumed after unmerging
   (what copy-on-write of merged pages adds to a claim).

KSM's settings are put back as they were (merged pages unmerged first, ``run=2``), and every VM
made here is removed.

    python -m bench.bench_ksm [--vms 6] [--pages-to-scan 4000] [--sleep-ms 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.qemu_proc import qemu_cpu_s, qemu_rss_mib
from vmworker import warm_pool
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

KSM = Path("/sys/kernel/mm/ksm")
SHAPE = warm_pool.Shape(1, 128)
PAGE = os.sysconf("SC_PAGE_SIZE")
SCAN_TIMEOUT_S = 300
SETTLE_S = 2.0
RESUMED_S = 1.0


def ksm(name: str) -> int:
    return int((KSM / name).read_text().split()[0])


def ksm_set(name: str, value: int) -> None:
    (KSM / name).write_text(f"{value}\n")


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable")


def ksmd_cpu_s() -> float:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "ksmd":
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    return float("nan")


def merge(pages_to_scan: int, sleep_ms: int) -> dict:
    """KSM on until two full scans are done; what it merged and what it cost."""
    cpu_before, started = ksmd_cpu_s(), time.monotonic()
    scans = ksm("full_scans")
    ksm_set("pages_to_scan", pages_to_scan)
    ksm_set("sleep_millisecs", sleep_ms)
    ksm_set("run", 1)
    while ksm("full_scans") < scans + 2:
        if time.monotonic() - started > SCAN_TIMEOUT_S:
            raise TimeoutError("KSM did not finish two full scans")
        time.sleep(0.5)
    return {
        "seconds": time.monotonic() - started,
        "ksmd_cpu_s": ksmd_cpu_s() - cpu_before,
        "pages_shared": ksm("pages_shared"),
        "pages_sharing": ksm("pages_sharing"),
    }


def resume_cpu_s(runtime: HyperVMRuntime, pool_id: str) -> float:
    """QEMU CPU seconds of one paused pooled VM resumed and left running for RESUMED_S (the
    guest writes its pages again: merged ones are copied first)."""
    before = qemu_cpu_s(f"hvm-{pool_id}")
    runtime.host.resume(pool_id)
    time.sleep(RESUMED_S)
    return qemu_cpu_s(f"hvm-{pool_id}") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--pages-to-scan", type=int, default=4000)
    parser.add_argument("--sleep-ms", type=int, default=20)
    args = parser.parse_args()
    if not KSM.is_dir():
        raise SystemExit("this kernel has no KSM (/sys/kernel/mm/ksm)")
    saved = {name: ksm(name) for name in ("run", "pages_to_scan", "sleep_millisecs")}
    scratch = Path(tempfile.mkdtemp(prefix="bench-ksm-", dir="/var/tmp"))
    scratch.chmod(0o755)
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=scratch / "runtime", warm_pool=True))
    try:
        ksm_set("run", 2)  # start from nothing merged
        ksm_set("run", 0)
        started = time.monotonic()
        pool_ids = [warm_pool.boot_blank(runtime, SHAPE) for _ in range(args.vms)]
        print(f"{args.vms} blank VMs (1x128) booted and paused in {time.monotonic() - started:.1f} s")
        time.sleep(SETTLE_S)
        rss_before = [qemu_rss_mib(f"hvm-{pool_id}") for pool_id in pool_ids]
        available_before = mem_available_mib()
        merged = merge(args.pages_to_scan, args.sleep_ms)
        time.sleep(SETTLE_S)
        available_after = mem_available_mib()
        saved_mib = merged["pages_sharing"] * PAGE / 2**20
        print(
            f"  RSS per paused VM, KSM off: median {statistics.median(rss_before):.1f} MiB, "
            f"sum {sum(rss_before):.0f} MiB"
        )
        print(
            f"  KSM on: two full scans in {merged['seconds']:.1f} s, ksmd CPU {merged['ksmd_cpu_s']:.2f} s; "
            f"pages shared {merged['pages_shared']}, sharing {merged['pages_sharing']}: "
            f"{saved_mib:.0f} MiB saved = {saved_mib / args.vms:.1f} MiB per VM "
            f"({100 * saved_mib / sum(rss_before):.0f} % of the VMs' RSS)"
        )
        print(f"  host MemAvailable {available_before:.0f} -> {available_after:.0f} MiB")
        with_ksm = resume_cpu_s(runtime, pool_ids[0])
        ksm_set("run", 2)  # unmerge, then the same resume without KSM
        ksm_set("run", 0)
        without_ksm = resume_cpu_s(runtime, pool_ids[1])
        print(
            f"  QEMU CPU of a pooled VM resumed for {RESUMED_S:.0f} s: {with_ksm:.2f} s after merging, "
            f"{without_ksm:.2f} s unmerged"
        )
    finally:
        ksm_set("run", 2)
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            ksm_set(name, saved[name])
        warm_pool.discard_all(runtime)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
