"""Benchmark: boot of the guest init under plain QEMU TCG, by phase, per initramfs variant.

Not a test. Builds the initramfs (uncompressed, as shipped, and gzip for comparison;
optionally with busybox), boots a busybox erofs rootfs whose app prints one line and
exits, ``repeats`` times each, and prints the medians of:

    boot_to_init_ms   guest CLOCK_MONOTONIC when /init started (kernel boot + unpack)
    init_to_exec_ms   /init start -> app execve succeeded ("started" event)
    wall_s            host: qemu start -> qemu exited after the guest powered off

    python -m bench.bench_guestinit_boot [--repeats N]

`bench_guest_boot()` returns the figures for the lead's combined benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.support import guest_qemu
from vmworker.guestinit import GuestConfig, build_initramfs, initramfs, write_config_disk

APP = GuestConfig(
    hostname="bench",
    argv=("/bin/sh", "-c", "echo hello; exit 3"),
    env=("PATH=/bin",),
    working_dir="",
    user="",
    rootfs_serial=guest_qemu.ROOTFS_SERIAL,
    rootfs_type="erofs",
    overlay_size_mib=16,
    stop_grace_s=5,
)


def _build(kernel: Path, cache_dir: Path, compression: str, busybox: Path | None) -> Path:
    shipped = initramfs.INITRAMFS_COMPRESSION
    initramfs.INITRAMFS_COMPRESSION = compression  # a bench-only switch, restored below
    try:
        return build_initramfs(
            kernel_release=kernel.name.removeprefix("vmlinuz-"),
            modules_root=Path("/lib/modules"),
            busybox=busybox,
            cache_dir=cache_dir / f"{compression}-{'busybox' if busybox else 'plain'}",
        )
    finally:
        initramfs.INITRAMFS_COMPRESSION = shipped


def bench_guest_boot(*, repeats: int = 5, work_dir: Path | None = None) -> dict[str, dict]:
    kernel = guest_qemu.guest_kernel()
    if kernel is None:
        raise SystemExit("linux-image-cloud-amd64 is required")
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hypervm-bench-guestinit-", dir=work_dir) as tmp:
        scratch = Path(tmp)
        tree = guest_qemu.make_busybox_tree(scratch / "tree")
        rootfs = guest_qemu.make_erofs(tree, scratch / "rootfs.erofs")
        config_disk = scratch / "config.img"
        write_config_disk(APP, config_disk)
        variants = {
            "none": ("none", None),
            "gzip": ("gzip", None),
            "none+busybox": ("none", guest_qemu.BUSYBOX),
        }
        images = {
            label: _build(kernel, scratch / "cache", compression, busybox)
            for label, (compression, busybox) in variants.items()
        }
        runs: dict[str, list[guest_qemu.BootResult]] = {label: [] for label in images}
        # Interleaved, so a noisy neighbour on the host hurts every variant alike.
        for _ in range(repeats):
            for label, image in images.items():
                result = guest_qemu.boot_guest(
                    kernel=kernel,
                    initramfs=image,
                    rootfs=rootfs,
                    config_disk=config_disk,
                    work_dir=scratch,
                )
                assert result.summary.exit_code == 3, result.log
                runs[label].append(result)
        for label, image in images.items():
            figures[label] = {
                "initramfs_bytes": image.stat().st_size,
                "boot_to_init_ms": statistics.median(r.summary.init_ms for r in runs[label]),
                "init_to_exec_ms": statistics.median(r.summary.init_to_exec_ms for r in runs[label]),
                "wall_s": statistics.median(r.wall_s for r in runs[label]),
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for label, values in bench_guest_boot(repeats=args.repeats).items():
        print(
            f"{label:14} initramfs {values['initramfs_bytes'] / 1024:7.0f} KiB"
            f"  boot->init {values['boot_to_init_ms']:7.1f} ms"
            f"  init->exec {values['init_to_exec_ms']:6.1f} ms"
            f"  wall (qemu start->exit) {values['wall_s']:5.2f} s"
        )


if __name__ == "__main__":
    main()
