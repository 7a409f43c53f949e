"""Benchmark of issue 10: create and attach a 1 GiB persistent volume.

Not a test: prints figures. On a real libvirtd (qemu:///system), in a throwaway dir pool:

1. ``create_s``: ``storageVolCreateXML`` of a fresh 1 GiB raw volume through the pool API;
   ``format_s``: ``mkfs.ext4`` once (lazy inode tables, no discard); ``delete_s``: the pool API's
   delete. Medians of ``repeats`` rounds; also the host blocks the new volume takes.
2. ``attach``: boot to app exec of the printing image through the runtime, with and without a
   1 GiB volume attached (made beforehand, so this is only the attach and the guest's mount at
   $MESOS_SANDBOX/data), interleaved; medians and the difference. And a first boot that creates
   and formats the volume as part of the boot (what an instance's first placement costs).

    python -m bench.bench_volume [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.oci_images import PRINTER, build_and_push
from tests.support.registry import start_registry, stop_registry
from tests.support.storage_pools import remove_storage_pool
from vmworker.guestinit.config import MESOS_SANDBOX
from vmworker.images import RegistryCredentials
from vmworker.runtime import HyperVMRuntime, InstanceSpec, RuntimeSettings, VolumeAttachment
from vmworker.storage.pool import MIB, StorageVolume, volume_format

GIB_MIB = 1024
TIMEOUT_S = 120


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def bench_pool_api(runtime: HyperVMRuntime, pool_name: str, repeats: int) -> dict:
    runtime.volume_pool(pool_name)
    create, fmt, delete, allocated = [], [], [], []
    for index in range(repeats):
        name = f"hvvol-bench-{index}"
        started = time.monotonic()
        path, _ = runtime.host.volume_create(pool_name, StorageVolume(name=name, capacity_bytes=GIB_MIB * MIB))
        create.append(time.monotonic() - started)
        started = time.monotonic()
        volume_format(Path(path))
        fmt.append(time.monotonic() - started)
        allocated.append(runtime.volume_used_bytes(pool_name, name) / MIB)
        started = time.monotonic()
        runtime.volume_delete(pool_name, name)
        delete.append(time.monotonic() - started)
    return {
        "size_mib": GIB_MIB,
        "create_s": _median(create),
        "format_s": _median(fmt),
        "create_and_format_s": _median([c + f for c, f in zip(create, fmt, strict=True)]),
        "delete_s": _median(delete),
        "allocated_after_format_mib": round(statistics.median(allocated), 1),
    }


def _boot_to_exec(runtime: HyperVMRuntime, spec: InstanceSpec) -> tuple[float, float]:
    """(host: boot() to app exec, guest: its init's start to app exec, which holds the mount)."""
    started = time.monotonic()
    result = runtime.boot(spec)
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + TIMEOUT_S
    while runtime.host.lookup(spec.instance_id) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.remove(spec.instance_id)
    return elapsed, result.timings_s.get("init_to_exec", float("nan"))


def bench_attach(runtime: HyperVMRuntime, pool_name: str, image, credentials, repeats: int) -> dict:
    def spec(volumes=()) -> InstanceSpec:
        return InstanceSpec(
            image=image.reference,
            credentials=credentials,
            tls_verify=False,
            memory_mib=128,
            env={"MESOS_SANDBOX": MESOS_SANDBOX},
            volumes=volumes,
        )

    def attachment(name: str) -> VolumeAttachment:
        return VolumeAttachment(
            volume_id=str(uuid.uuid4()), pool_name=pool_name, volume_name=name, size_mib=GIB_MIB, container_path="data"
        )

    _boot_to_exec(runtime, spec())  # warm-up: pull, initramfs, probe
    first_boot = [_boot_to_exec(runtime, spec((attachment(f"hvvol-first-{i}"),)))[0] for i in range(repeats)]
    kept = attachment("hvvol-kept")
    runtime.volumes_prepare((kept,), instance_id=str(uuid.uuid4()))
    without, with_volume = [], []
    for _ in range(repeats):
        without.append(_boot_to_exec(runtime, spec()))
        with_volume.append(_boot_to_exec(runtime, spec((kept,))))
    host = ([run[0] for run in without], [run[0] for run in with_volume])
    guest = ([run[1] for run in without], [run[1] for run in with_volume])
    return {
        "boot_to_exec_without_volume_s": _median(host[0]),
        "boot_to_exec_with_volume_s": _median(host[1]),
        "attach_and_mount_s": round(_median(host[1]) - _median(host[0]), 4),
        "guest_init_to_exec_without_volume_s": _median(guest[0]),
        "guest_init_to_exec_with_volume_s": _median(guest[1]),
        "guest_mount_s": round(_median(guest[1]) - _median(guest[0]), 4),
        "first_boot_creating_the_volume_s": _median(first_boot),
    }


def bench_volume(repeats: int = 5) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="hypervm-bench-volume-", dir="/var/tmp"))
    scratch.chmod(0o755)
    registry = start_registry(scratch / "registry")
    pool_name = f"hvm-vol-bench-{uuid.uuid4().hex[:8]}"
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=scratch / "state"))
    try:
        authfile = registry.write_authfile(scratch / "auth.json")
        printer = build_and_push(PRINTER, cache_dir=scratch / "layouts", registry=registry.host_port, authfile=authfile)
        credentials = RegistryCredentials(registry.username, registry.password)
        return {
            "pool_api": bench_pool_api(runtime, pool_name, repeats),
            "attach": bench_attach(runtime, pool_name, printer, credentials, repeats),
            "virt_type": runtime.virt_type(),
            "repeats": repeats,
        }
    finally:
        remove_storage_pool(pool_name, runtime.settings.libvirt_uri)
        stop_registry(registry)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures = bench_volume(args.repeats)
    print(json.dumps(figures, indent=2))
    pool, attach = figures["pool_api"], figures["attach"]
    print(
        f"\n1 GiB volume: create {pool['create_s']} s + ext4 {pool['format_s']} s = {pool['create_and_format_s']} s "
        f"(host blocks after format: {pool['allocated_after_format_mib']} MiB), delete {pool['delete_s']} s"
    )
    print(
        f"boot to exec ({figures['virt_type']}): {attach['boot_to_exec_without_volume_s']} s without, "
        f"{attach['boot_to_exec_with_volume_s']} s with a 1 GiB volume (attach + mount "
        f"{attach['attach_and_mount_s']} s); first boot creating it {attach['first_boot_creating_the_volume_s']} s"
    )
    print(
        f"guest init to exec: {attach['guest_init_to_exec_without_volume_s']} s without, "
        f"{attach['guest_init_to_exec_with_volume_s']} s with (the guest's find + mount: {attach['guest_mount_s']} s)"
    )


if __name__ == "__main__":
    main()
