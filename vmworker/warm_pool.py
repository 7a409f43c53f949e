"""Fast start: a per-host pool of paused blank HyperVMs (issue 11, docs/fast-start.md).

A blank VM is our kernel and init with no tenant data: booted with ``hvm.blank`` on its
command line, the init loads its drivers, opens its log and control ports, says ``waiting``
and polls for its config disk; the host then pauses it (libvirt suspend: no CPU while pooled).
Its QEMU user netdev exists from the start (``restrict=on``, no forwards).

A claim (``claim_and_start``) attaches, live, the rootfs disk, the volumes and the tenant NIC,
adds the published ports' host forwards (HMP ``hostfwd_add``), rewrites the domain's metadata
to name the instance (the domain keeps its own UUID and name: libvirt renames only inactive
domains), attaches the config disk last and resumes the VM; the init reads the config and execs
the app. A pooled VM is single-use: claimed once, never returned to the pool, so no two
instances (tenants) ever share one. Any failure during a claim destroys the half-claimed VM and
leaves nothing behind; the caller then cold-boots as before.

Files: ``<state>/pool/<pool id>/`` holds the VM's console and guest logs; ``ready`` (its shape)
exists while it waits to be claimed. A claim renames ``ready`` to ``claimed`` (atomic: one
winner among the host's worker processes), then ``instances/<instance id>`` becomes a symlink to
the pool folder and the control socket a symlink to the pool VM's.

Settings: ``HYPERVM_WARM_POOL`` = ``"<vcpus>x<memory MiB>:<count>,..."`` (e.g. ``"1x128:2"``;
empty: no pool) and ``HYPERVM_WARM_POOL_BUDGET_MIB`` (the guest memory all pooled VMs may hold
together; the pool stays smaller when the budget is reached).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmworker.driver.config import DiskConfig, InterfaceConfig
from vmworker.driver.designer import METADATA_INSTANCE_KEY, NET_ID, POOL_BLANK, POOL_METADATA_KEY, virtio_disk_name
from vmworker.driver.errors import DriverError
from vmworker.driver.guest import GuestState
from vmworker.driver.spec import ChannelSpec, DomainSpec
from vmworker.guestinit.protocol import CONTROL_PORT_NAME, KERNEL_CMDLINE, LOG_PORT_NAME, GuestEvent, GuestLogParser
from vmworker.network.tenant import instance_mac

if TYPE_CHECKING:
    from vmworker.runtime import BootResult, HyperVMRuntime

logger = logging.getLogger(__name__)

POOL_DIR = "pool"
READY_FILE = "ready"
CLAIMED_FILE = "claimed"
BLANK_BOOT_WORD = "hvm.blank"  # hvinit.c's BLANK_BOOT_WORD
# TCG translation cache of a pooled VM (and of the instance it becomes); None: the designer's
# 32 MiB. Measured (bench/bench_deploy.py, docs/fast-start.md): 8 MiB cut a paused pooled VM's
# QEMU RSS from 207 to 180 MiB but made a warm start cost 2.5 s of QEMU CPU instead of 0.5 s
# (page 2.5 s instead of 0.6 s: the small cache retranslates), so pooled VMs keep 32 MiB.
POOL_TB_CACHE_MIB: int | None = None
_SHAPE = re.compile(r"^\s*(\d{1,3})x(\d{2,6}):(\d{1,3})\s*$")


OWNER_METADATA_KEY = "owner"


def owner_tag(runtime: HyperVMRuntime) -> str:
    """Names the runtime (its state dir) whose pool a blank VM belongs to."""
    return hashlib.sha256(str(runtime.state_dir.resolve()).encode()).hexdigest()[:16]


class PoolConfigError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Shape:
    vcpus: int
    memory_mib: int

    @property
    def label(self) -> str:
        return f"{self.vcpus}x{self.memory_mib}"


@dataclass(frozen=True)
class PoolTarget:
    sizes: dict[Shape, int]
    budget_mib: int

    def wanted(self, ready: dict[Shape, int]) -> Shape | None:
        """The next shape to boot a blank VM of, or None when every shape has its count or
        one more would pass the memory budget (counted over every pooled VM)."""
        held = sum(shape.memory_mib * count for shape, count in ready.items())
        for shape, size in sorted(self.sizes.items()):
            if ready.get(shape, 0) < size and held + shape.memory_mib <= self.budget_mib:
                return shape
        return None


def parse_pool_setting(value: str, budget_mib: int) -> PoolTarget:
    """``"1x128:2,1x256:1"`` -> counts per shape; an empty value is no pool."""
    sizes: dict[Shape, int] = {}
    for part in filter(None, (item.strip() for item in (value or "").split(","))):
        match = _SHAPE.match(part)
        if not match:
            raise PoolConfigError(f"warm pool entry {part!r} is not <vcpus>x<memory MiB>:<count>")
        vcpus, memory_mib, count = (int(group) for group in match.groups())
        if vcpus < 1 or memory_mib < 96:
            raise PoolConfigError(f"warm pool entry {part!r}: at least 1 vCPU and 96 MiB")
        sizes[Shape(vcpus, memory_mib)] = count
    if budget_mib < 0:
        raise PoolConfigError("the warm pool's memory budget must not be negative")
    return PoolTarget(sizes=sizes, budget_mib=budget_mib)


def pool_root(runtime: HyperVMRuntime) -> Path:
    return runtime.state_dir / POOL_DIR


def _ready_shape(directory: Path) -> Shape | None:
    try:
        data = json.loads((directory / READY_FILE).read_text())
        return Shape(int(data["vcpus"]), int(data["memory_mib"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ready_vms(runtime: HyperVMRuntime) -> dict[str, Shape]:
    """Pool id -> shape of the blank VMs waiting to be claimed (by their ``ready`` file)."""
    root = pool_root(runtime)
    if not root.is_dir():
        return {}
    found = {}
    for directory in root.iterdir():
        shape = _ready_shape(directory)
        if shape is not None:
            found[directory.name] = shape
    return found


def ready_counts(runtime: HyperVMRuntime) -> dict[Shape, int]:
    counts: dict[Shape, int] = {}
    for shape in ready_vms(runtime).values():
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def boot_blank(runtime: HyperVMRuntime, shape: Shape, *, tb_cache_mib: int | None = POOL_TB_CACHE_MIB) -> str:
    """Boot one blank VM of ``shape``, wait for its init's ``waiting``, pause it, mark it ready.
    ``tb_cache_mib``: its TCG translation cache (None: the designer's policy, 32 MiB)."""
    pool_id = str(uuid.uuid4())
    directory = pool_root(runtime) / pool_id
    runtime._qemu_traversed_dir(pool_root(runtime))
    runtime._qemu_traversed_dir(directory)
    from vmworker.runtime import CONSOLE_LOG, GUEST_LOG, QEMU_READ_FILE_MODE

    (directory / GUEST_LOG).touch(mode=QEMU_READ_FILE_MODE)
    runtime._qemu_readable_file(directory / GUEST_LOG)
    Path(runtime.settings.socket_root).mkdir(mode=0o755, parents=True, exist_ok=True)
    runtime._qemu_writable_dir(runtime.socket_dir)
    domain = DomainSpec(
        instance_id=pool_id,
        kernel=runtime.boot_kernel(),
        initrd=runtime.initramfs(),
        cmdline=f"{KERNEL_CMDLINE} {BLANK_BOOT_WORD}",
        vcpus=shape.vcpus,
        memory_mib=shape.memory_mib,
        console_log=directory / CONSOLE_LOG,
        virt_type=runtime.virt_type(),
        channels=(
            ChannelSpec(name=LOG_PORT_NAME, path=directory / GUEST_LOG, kind="file"),
            ChannelSpec(name=CONTROL_PORT_NAME, path=runtime.control_socket(pool_id), kind="unix"),
        ),
        tcg_tb_cache_mib=tb_cache_mib,
        user_net=True,
        user_net_mac=instance_mac(pool_id, "user"),
        metadata={POOL_METADATA_KEY: POOL_BLANK, "shape": shape.label, OWNER_METADATA_KEY: owner_tag(runtime)},
    )
    try:
        runtime.host.define_and_start(domain)
        _wait_for_event(runtime, pool_id, directory / GUEST_LOG, "waiting")
        runtime.host.suspend(pool_id)
        ready = directory / f".{READY_FILE}.tmp"
        ready.write_text(json.dumps({"vcpus": shape.vcpus, "memory_mib": shape.memory_mib}))
        os.replace(ready, directory / READY_FILE)
    except BaseException:
        discard(runtime, pool_id)
        raise
    logger.info("warm_pool.ready", extra={"pool_id": pool_id, "shape": shape.label})
    return pool_id


def _wait_for_event(runtime: HyperVMRuntime, pool_id: str, log_path: Path, name: str) -> None:
    deadline = time.monotonic() + runtime.settings.boot_timeout_s
    parser = GuestLogParser()
    with open(log_path, "rb") as log:
        while True:
            for record in parser.feed(log.read()):
                if isinstance(record, GuestEvent) and record.name == name:
                    return
                if isinstance(record, GuestEvent) and record.name in ("error", "exit"):
                    raise DriverError(f"blank VM {pool_id}: {record.name} {record.value}")
            if runtime.host.lookup(pool_id) is None:
                raise DriverError(f"blank VM {pool_id} stopped before it was waiting")
            if time.monotonic() > deadline:
                raise DriverError(f"blank VM {pool_id} was not waiting within {runtime.settings.boot_timeout_s} s")
            time.sleep(0.05)


def discard(runtime: HyperVMRuntime, pool_id: str) -> None:
    """Destroy a pooled VM and remove its files (whatever state it is in)."""
    guest = runtime.host.lookup(pool_id)
    if guest is not None:
        guest.destroy()
    runtime.control_socket(pool_id).unlink(missing_ok=True)
    shutil.rmtree(pool_root(runtime) / pool_id, ignore_errors=True)


def discard_all(runtime: HyperVMRuntime) -> None:
    """Every pooled VM of this runtime, claimed ones included (for a state dir about to go)."""
    root = pool_root(runtime)
    for directory in list(root.iterdir()) if root.is_dir() else []:
        discard(runtime, directory.name)


def _linked_pool_ids(runtime: HyperVMRuntime) -> set[str]:
    """The pooled VMs instances run in (their ``instances/<id>`` folders link to them)."""
    linked = set()
    if runtime.instances_dir.is_dir():
        for entry in runtime.instances_dir.iterdir():
            if entry.is_symlink():
                linked.add(Path(os.readlink(entry)).name)
    return linked


def discard_unclaimed(runtime: HyperVMRuntime) -> list[str]:
    """Every pooled VM no instance runs in or is being started in (ready or half-made): for a
    host worker that stops, so a Ctrl-C leaves no paused blank VM holding its memory. Instances
    started in pooled VMs stay (their folders are linked from ``instances/``), and so does a
    claim under way in a boot the stopping worker still finishes (its own failure path, or the
    next start's sweep, cleans up after it)."""
    root = pool_root(runtime)
    linked = _linked_pool_ids(runtime)
    removed = []
    for directory in list(root.iterdir()) if root.is_dir() else []:
        if directory.name not in linked and not (directory / CLAIMED_FILE).exists():
            discard(runtime, directory.name)
            removed.append(directory.name)
    return removed


def take(runtime: HyperVMRuntime, shape: Shape) -> str | None:
    """A paused blank VM of ``shape``, now claimed by this caller (its ``ready`` renamed away);
    one found dead on the way is discarded. None when the pool has none."""
    for pool_id, ready_shape in sorted(ready_vms(runtime).items()):
        if ready_shape != shape:
            continue
        directory = pool_root(runtime) / pool_id
        try:
            os.rename(directory / READY_FILE, directory / CLAIMED_FILE)
        except FileNotFoundError:
            continue  # another process claimed it first
        guest = runtime.host.lookup(pool_id)
        if guest is not None and guest.state == GuestState.PAUSED:
            return pool_id
        logger.warning("warm_pool.dead", extra={"pool_id": pool_id})
        discard(runtime, pool_id)
    return None


def sweep(runtime: HyperVMRuntime) -> list[str]:
    """Discard pooled VMs that died (killed while paused) or were left half-made or
    half-claimed (no instance links to them); unclaimed blank domains without files too."""
    removed = []
    root = pool_root(runtime)
    linked = _linked_pool_ids(runtime)
    known = set()
    if root.is_dir():
        for directory in root.iterdir():
            pool_id = directory.name
            known.add(pool_id)
            if pool_id in linked:
                continue
            guest = runtime.host.lookup(pool_id)
            state = guest.state if guest is not None else GuestState.ABSENT
            if (directory / READY_FILE).exists() and state == GuestState.PAUSED:
                continue
            age = time.time() - directory.stat().st_mtime
            if not (directory / READY_FILE).exists() and age < runtime.settings.boot_timeout_s + 30:
                continue  # still being booted or claimed
            discard(runtime, pool_id)
            removed.append(pool_id)
    for guest in runtime.host.list_guests(blank=True):
        if guest.instance_id in known:
            continue
        try:
            owner = guest.metadata().get(OWNER_METADATA_KEY)
        except DriverError:
            continue  # gone meanwhile
        if owner == owner_tag(runtime):  # never another runtime's (state dir's) pool on this libvirtd
            guest.destroy()
            removed.append(guest.instance_id)
    if removed:
        logger.warning("warm_pool.swept", extra={"pool_ids": removed})
    return removed


def boots_in_progress(runtime: HyperVMRuntime, instance_id: str | None = None) -> bool:
    """Whether a boot of this host (of ``instance_id`` only, when given) is under way
    (runtime.boot's marker files; one left by a crashed worker counts only until the boot
    timeout)."""
    from vmworker.runtime import BOOTING_DIR

    directory = runtime.state_dir / BOOTING_DIR
    if not directory.is_dir():
        return False
    now = time.time()
    markers = [directory / instance_id] if instance_id is not None else directory.iterdir()
    for marker in markers:
        try:
            if now - marker.stat().st_mtime < runtime.settings.boot_timeout_s:
                return True
        except FileNotFoundError:
            continue
    return False


def refill_one(runtime: HyperVMRuntime, target: PoolTarget) -> str | None:
    """Boot one blank VM if the pool is short of its target; None when it is full."""
    shape = target.wanted(ready_counts(runtime))
    if shape is None:
        return None
    return boot_blank(runtime, shape)


def claim_and_start(
    runtime: HyperVMRuntime, spec, instance_id, prepared, argv, virt_type, timings, notify, holder_ended
) -> BootResult | None:
    """Start the instance in a pooled VM of its shape; None when the pool has none (the caller
    cold-boots). A failure during the claim leaves nothing behind and also returns None."""
    from vmworker.runtime import (
        CONFIG_DISK_SERIAL,
        ROOTFS_SERIAL,
        BootFailed,
        BootResult,
        busy_host_ports,
    )

    if busy_host_ports(spec.ports):
        return None  # the cold path reports it
    started = runtime._clock()
    pool_id = take(runtime, Shape(spec.vcpus, spec.memory_mib))
    if pool_id is None:
        return None
    notify("booting")
    directory = runtime.instance_dir(instance_id)
    pool_directory = pool_root(runtime) / pool_id
    name = spec.name or f"hvm-{instance_id[:8]}"
    resumed = False
    try:
        directory.symlink_to(Path("..") / POOL_DIR / pool_id)
        runtime.control_socket(instance_id).symlink_to(runtime.control_socket(pool_id).name)
        volume_disks = runtime.volumes_prepare(spec.volumes, instance_id=instance_id, holder_ended=holder_ended)
        config_disk = runtime._write_instance_files(
            spec,
            instance_id,
            pool_directory,
            prepared,
            argv,
            virt_type,
            volume_disks,
            instance_mac(pool_id, "user"),
            extra={"pool_id": pool_id, "start": "warm"},
        )
        host = runtime.host
        disks = [(prepared.fs_path, ROOTFS_SERIAL, True)]
        disks += [(disk.path, disk.serial, disk.readonly) for disk in volume_disks]
        for index, (path, serial, readonly) in enumerate(disks):
            host.attach_device(pool_id, _disk_xml(index, path, serial, readonly))
        if spec.network:
            runtime.network_ensure(spec.network.network)
            interface = InterfaceConfig(
                network=spec.network.network.libvirt_name, mac=spec.network.mac, driver="qemu", rom_enabled=False
            )
            host.attach_device(pool_id, interface.to_xml())
        for forward in spec.ports:
            rule = f"{forward.protocol}:{forward.host_ip}:{forward.host_port}-:{forward.guest_port}"
            answer = host.monitor_command(pool_id, f"hostfwd_add {NET_ID} {rule}").strip()
            if answer:
                raise DriverError(f"host forwarding {rule}: {answer}")
        if spec.cpu_quota_pct is not None:
            host.set_cpu_quota(pool_id, spec.cpu_quota_pct)
        host.claim_metadata(pool_id, {**runtime._domain_metadata(spec, name), METADATA_INSTANCE_KEY: instance_id})
        host.attach_device(pool_id, _disk_xml(len(disks), config_disk, CONFIG_DISK_SERIAL, True))
        host.resume(pool_id)
        resumed = True
        timings["claim"] = round(runtime._clock() - started, 4)
        runtime._wait_for_start(instance_id, directory, started, timings)
    except Exception as error:
        logger.warning("warm_pool.claim_failed", extra={"pool_id": pool_id, "instance_id": instance_id}, exc_info=True)
        discard(runtime, pool_id)
        runtime.control_socket(instance_id).unlink(missing_ok=True)
        if directory.is_symlink():
            directory.unlink()
        if resumed and isinstance(error, BootFailed):
            # The guest ran the app with its config and it failed (an exit, a hang, a stop): the
            # same app would fail a cold boot too, after a whole boot's time. The reason and the
            # console tail travel in the exception.
            raise
        return None
    logger.info("runtime.booted", extra={"instance_id": instance_id, "timings": timings, "start": "warm"})
    return BootResult(
        instance_id=instance_id,
        name=name,
        domain_name=f"hvm-{pool_id}",
        image_digest=prepared.manifest_digest,
        virt_type=virt_type,
        timings_s=timings,
        ports=spec.ports,
        reused=False,
        start="warm",
    )


def _disk_xml(index: int, path: Path, serial: str, readonly: bool) -> str:
    # Past the cold boot's names (vda.. are hints only: the guest finds disks by serial).
    disk = DiskConfig(
        source_path=str(path),
        target_dev=virtio_disk_name(index),
        target_bus="virtio",
        driver_format="raw",
        readonly=readonly,
        serial=serial,
    )
    return disk.to_xml()
