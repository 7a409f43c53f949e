"""The HyperVM lifecycle: an OCI image in, its app running in its own VM out.

Contract (what the deploy pipeline and the operator CLI rely on):

- ``boot(spec)`` pulls and prepares the image (cached per digest), builds or reuses the guest
  initramfs, writes the guest config as data (a config disk), starts the domain through the
  driver and returns once the guest init reports the app ``started`` — with timings per phase.
  It is idempotent per ``instance_id``: a second call while the instance exists finds its
  domain and its log instead of making another VM. On a boot failure the domain is destroyed
  and ``BootFailed`` carries the guest's error and the console tail.
- Each instance owns ``<state_dir>/instances/<uuid>/``: ``instance.json`` (what was asked),
  ``config.img``, ``guest.log`` (the log port, written by virtlogd for QEMU: app output and
  guest events, the durable record that survives a worker restart; rotated by virtlogd into
  ``guest.log.0`` ..., see vmworker.log_files) and ``console.log``; its control socket
  is ``<socket_root>/<hash of state_dir>/<uuid>.sock`` (unix socket paths must stay short).
  Once it has ended (``stop``, ``release``, or an exit record with the domain gone) it also holds
  ``ended.json``, its final status: ``status`` answers from it without reading the log or asking
  libvirt. ``prune_ended`` deletes the folders of instances ended longer ago than a retention.
- ``release`` is for an instance that ended by itself (its app exited, its VM vanished): what is
  left of its domain goes, and so does its tenant network on this host once no domain uses it.
  ``network_sweep`` removes every tenant network this runtime made (``networks/<id>`` notes
  it) that no domain uses and the caller does not name as wanted.
- A stop never waits for the app: ``request_stop`` sends ``stop`` on the control port (the init
  SIGTERMs the app, SIGKILLs it after the grace), records the request and its deadline (grace +
  STOP_KILL_MARGIN_S, on the host's clock: the guest is not trusted to keep it) in
  ``stop.requested`` and returns, bounded by the control socket's timeout. The first request's
  deadline stands: one sent again (a re-delivered task) changes nothing. ``stop_progress``,
  called by the host's periodic reconcile, ends the stop once the app exited (its ``exit``
  record), the VM is gone, or the deadline passed (the VM is destroyed: the hard kill).
  ``stop`` (the operator CLI) does both and waits.
- Files: the state dir and every folder QEMU must traverse are 0710 root:<qemu user's group>
  (QEMU, as that user, reaches the files libvirt labels for it; nobody else lists or reads
  anything); instance records are 0600, the config disk and guest log 0640.
- ``status``, ``logs``, ``follow`` read the instance's files; nothing here needs the process
  that booted the VM to still be alive. ``status`` reads a growing log incrementally: it
  remembers, per instance, how far it has read and what the events said (bounded: the newest
  STATUS_CACHE_INSTANCES instances, the last MAX_STATUS_ERRORS errors each), following the
  log's rotated files. Everything in the log is the guest's and hostile: status() never raises
  on it, believes only well-formed records (vmworker.guestinit.protocol) and logs the others
  (``runtime.guest_records_malformed``, at most once a MALFORMED_LOG_EVERY_S per instance).
- ``exec_check`` runs a command in the instance's container through the control port (the
  guest init forks ``/bin/sh -c``) and returns its exit code; ``ExecCheckFailed`` says why it
  could not run to its end (no /bin/sh in the image, timeout, the VM unreachable, a stop).
  QEMU serves the control socket to one client at a time, and a stop must never queue behind
  a long check: ``stop`` first leaves ``stop.requested`` in the instance folder (seen by any
  process), and a check gives the channel up within EXEC_STOP_POLL_S once it is there. While
  the exec agent holds the port for shells, both go through its relay socket instead
  (vmworker.control_relay), so neither waits for a shell to end.

No Django here: plain dataclasses in and out. Split by concern: the settings, spec, results and
errors are vmworker.runtime_types; what status() knows from an instance's files is
vmworker.guest_status; the app's argv and environment are vmworker.launch; the warm pool's
claim is vmworker.warm_pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pwd
import shutil
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict
from pathlib import Path

from vmworker.control_relay import relay_socket_path
from vmworker.driver.config import DiskConfig
from vmworker.driver.errors import DriverError
from vmworker.driver.guest import STOPPED_STATES, Guest, GuestState, GuestStats
from vmworker.driver.kernel import pvh_kernel_for
from vmworker.driver.probe import find_guest_kernel, probe_virt_type
from vmworker.driver.spec import ChannelSpec, DiskSpec, DomainSpec, InterfaceSpec, PortForward
from vmworker.guest_status import (
    LogProgress,
    instance_status_from,
    is_end_record,
    progress_from,
)
from vmworker.guestinit.config import (
    CONFIG_DISK_SERIAL,
    GuestConfig,
    GuestNetwork,
    GuestTenantInterface,
    GuestVolume,
    write_config_disk,
)
from vmworker.guestinit.initramfs import build_initramfs
from vmworker.guestinit.protocol import (
    CONTROL_PORT_NAME,
    KERNEL_CMDLINE,
    LOG_PORT_NAME,
    STOP_COMMAND,
    ExecRequestInvalid,
    ExecResult,
    GuestEvent,
    GuestLogParser,
    GuestRecord,
    exec_request,
    parse_exec_result,
    safe_text,
)
from vmworker.images.errors import ImageError
from vmworker.images.store import ImageStore, PreparedImage
from vmworker.launch import merge_env, resolve_argv
from vmworker.log_files import LogPosition, first_position, log_files, log_read
from vmworker.network.tenant import NetworkAttachment, TenantNetwork, instance_mac
from vmworker.private_files import write_private
from vmworker.runtime_types import (
    BootFailed,
    BootResult,
    ExecCheckFailed,
    HostPortBusy,
    InstanceNotFound,
    InstanceSpec,
    InstanceStatus,
    InvalidSpec,
    NothingToRun,
    RuntimeSettings,
    StopRequest,
    VolumeAttachment,
    VolumeBusy,
    busy_host_ports,
    host_port_busy,
)
from vmworker.storage.pool import MIB, StoragePool, StorageVolume, VolumeFormatError, is_formatted, volume_format

logger = logging.getLogger("vmworker.runtime")

ROOTFS_SERIAL = "hvm-rootfs"
VOLUME_SERIAL_PREFIX = "hvm-vol"  # + the volume's index in the spec: "hvm-vol0"
VOLUMES_DIR = "volumes"  # the host's dir storage pool, under the state dir
USER_NET_GUEST = GuestNetwork(ip_cidr="10.0.2.15/24", gateway="10.0.2.2")
BOOTING_DIR = "booting"
INSTANCE_FILE = "instance.json"
GUEST_LOG = "guest.log"
CONSOLE_LOG = "console.log"
ENDED_FILE = "ended.json"
CONSOLE_TAIL_BYTES = 4096
STATUS_CACHE_INSTANCES = 4096
LOG_READ_CHUNK_BYTES = 1024 * 1024
LOG_TAIL_CHECK_BYTES = 64
MALFORMED_LOG_EVERY_S = 60.0
LOG_READ_MAX_TURNS = 4096  # chunks per status(): 4 GiB, past any kept log (virtlogd caps it)
# How long past the command's own timeout the guest's answer may take (the init kills the
# command at its timeout; this covers the port and a paused control reader).
EXEC_REPLY_MARGIN_S = 5.0
STOP_REQUEST_FILE = "stop.requested"
EXEC_STOP_POLL_S = 0.2  # how soon a running check gives the control channel up to a stop
# After the grace: the init's SIGKILL, its exit record and power-off before the host destroys.
STOP_KILL_MARGIN_S = 5.0
STOP_CHANNEL_TIMEOUT_S = 5.0  # connect + send of "stop": what a stop request may wait for
# Folders QEMU traverses to files libvirt labels for it: its group may pass, nobody else.
QEMU_TRAVERSED_DIR_MODE = 0o710
QEMU_READ_FILE_MODE = 0o640


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(tmp, json.dumps(data, indent=1, sort_keys=True).encode())
    os.replace(tmp, path)


class HyperVMRuntime:
    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        host=None,
        image_store: ImageStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.instances_dir = self.state_dir / "instances"
        for directory in (self.state_dir, self.instances_dir, self.state_dir / "images"):
            self._qemu_traversed_dir(directory)
        if host is None:
            from vmworker.driver.host import Host

            host = Host(settings.libvirt_uri)
        self.host = host
        self._image_store = image_store
        self._clock = clock
        self._virt_type: str | None = settings.virt_type
        self._kernel: Path | None = None
        self._initramfs: Path | None = None
        self._log_progress: OrderedDict[str, LogProgress] = OrderedDict()
        self.log_bytes_read = 0  # for tests and benchmarks: what status() has read in total

    # --- host-wide resources ------------------------------------------------------------

    @property
    def image_store(self) -> ImageStore:
        if self._image_store is None:
            self._image_store = ImageStore(
                self.state_dir / "images",
                max_cache_bytes=self.settings.image_cache_bytes,
                max_image_bytes=self.settings.max_image_bytes,
                qemu_group_id=self._qemu_group_id(),
                max_unpacked_bytes=self.settings.max_unpacked_bytes,
            )
        return self._image_store

    @property
    def kernel_bzimage(self) -> Path:
        return Path(self.settings.kernel) if self.settings.kernel else find_guest_kernel()

    @property
    def kernel_release(self) -> str:
        return self.kernel_bzimage.name.removeprefix("vmlinuz-")

    def boot_kernel(self) -> Path:
        if self._kernel is None:
            self._qemu_traversed_dir(self.state_dir / "kernel")
            self._kernel = pvh_kernel_for(self.kernel_bzimage, self.state_dir / "kernel")
        return self._kernel

    def initramfs(self) -> Path:
        if self._initramfs is None or not self._initramfs.exists():
            self._qemu_traversed_dir(self.state_dir / "initramfs")
            self._initramfs = build_initramfs(
                kernel_release=self.kernel_release,
                modules_root=self.settings.modules_root,
                cache_dir=self.state_dir / "initramfs",
            )
        return self._initramfs

    def virt_type(self) -> str:
        """Forced by settings, else the boot probe's answer, recorded in probe.json per kernel."""
        if self._virt_type is None:
            self._virt_type = self.probe()["virt_type"]
        return self._virt_type

    def probe(self, *, fresh: bool = False) -> dict:
        record_path = self.state_dir / "probe.json"
        kernel = str(self.kernel_bzimage)
        if not fresh and record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("kernel") == kernel and record.get("uri") == self.settings.libvirt_uri:
                return record
        started = self._clock()
        result = probe_virt_type(
            self.host,
            kernel=self.boot_kernel(),
            work_dir=self.state_dir / "probe",
            force=self.settings.virt_type,
        )
        record = {
            "virt_type": result.virt_type,
            "boot_s": result.boot_s,
            "probe_s": round(self._clock() - started, 3),
            "forced": result.forced,
            "attempts": [asdict(attempt) for attempt in result.attempts],
            "kernel": kernel,
            "uri": self.settings.libvirt_uri,
        }
        if not result.forced:
            _atomic_write_json(record_path, record)
        return record

    # --- instances ----------------------------------------------------------------------

    def instance_dir(self, instance_id: str) -> Path:
        return self.instances_dir / str(uuid.UUID(instance_id))

    @property
    def socket_dir(self) -> Path:
        """Short, and derived from the state dir so that two runtimes never share one."""
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
        return Path(self.settings.socket_root) / digest

    def control_socket(self, instance_id: str) -> Path:
        return self.socket_dir / f"{uuid.UUID(instance_id)}.sock"

    def _control_connect(self, instance_id: str, *, timeout_s: float) -> socket.socket:
        """A connection to the guest's control port: through the exec agent's relay while it
        holds the port for open shells (vmworker.control_relay), else QEMU's socket itself."""
        control_socket = self.control_socket(instance_id)
        for path in (relay_socket_path(control_socket), control_socket):
            control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            control.settimeout(timeout_s)
            try:
                control.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                control.close()
                if path == control_socket:
                    raise
                continue  # no relay (none, or a stale one): QEMU's socket
            except BaseException:
                control.close()
                raise
            return control
        raise AssertionError("unreachable")

    def _qemu_account(self) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(self.settings.qemu_user)
        except KeyError:
            return None  # QEMU runs as this process's user (a session libvirtd)

    def _qemu_group_id(self) -> int | None:
        """The group through which QEMU reaches its files, when this process can hand it out."""
        account = self._qemu_account()
        return account.pw_gid if account is not None and os.geteuid() == 0 else None

    def _qemu_writable_dir(self, path: Path) -> None:
        """QEMU binds the control socket itself, as the qemu user. Nobody else may reach it:
        whoever can connect to a control socket can stop the app and run commands in it."""
        path.mkdir(mode=0o750, exist_ok=True)
        account = self._qemu_account()
        if account is None:
            path.chmod(0o700)
            return
        if os.geteuid() == 0:
            os.chown(path, account.pw_uid, account.pw_gid)

    def _qemu_traversed_dir(self, path: Path) -> None:
        """A folder on the way to files QEMU opens itself (disks, kernel, initrd, the guest log:
        libvirt labels the files, never their folders): QEMU's group may pass through it, no
        other user may list or enter it (tenant logs, configs and image contents are inside)."""
        path.mkdir(mode=QEMU_TRAVERSED_DIR_MODE, parents=True, exist_ok=True)
        group_id = self._qemu_group_id()
        if group_id is not None:
            os.chown(path, 0, group_id)
            path.chmod(QEMU_TRAVERSED_DIR_MODE)
        elif self._qemu_account() is not None:
            path.chmod(0o711)  # not root: QEMU's user passes as "other" (no listing)
        else:
            path.chmod(0o700)  # QEMU runs as this process's user

    def _qemu_readable_file(self, path: Path) -> None:
        group_id = self._qemu_group_id()
        if group_id is not None:
            os.chown(path, 0, group_id)
        path.chmod(QEMU_READ_FILE_MODE)

    def boot(
        self,
        spec: InstanceSpec,
        *,
        on_phase: Callable[[str], None] | None = None,
        on_image: Callable[[PreparedImage], None] | None = None,
        volume_holder_ended: Callable[[str], bool] | None = None,
    ) -> BootResult:
        """``on_image`` sees the prepared image before anything of the instance is made (the
        portal charges its unpacked size there); an exception from it ends the boot.
        ``volume_holder_ended`` (see volumes_prepare) tells whether another VM that still has
        one of the volumes attached belongs to an instance that has ended."""
        instance_id = str(uuid.UUID(spec.instance_id))
        directory = self.instance_dir(instance_id)
        if (directory / INSTANCE_FILE).exists():
            return self._resume_boot(instance_id)
        # While it exists, the warm pool boots no blank VM (vmworker.warm_pool.boots_in_progress).
        marker = self.state_dir / BOOTING_DIR / instance_id
        marker.parent.mkdir(mode=0o700, exist_ok=True)
        marker.touch()
        try:
            return self._boot(spec, instance_id, directory, on_phase, on_image, volume_holder_ended)
        finally:
            marker.unlink(missing_ok=True)

    def _boot(self, spec, instance_id, directory, on_phase, on_image, volume_holder_ended) -> BootResult:
        if spec.memory_mib < self.settings.min_memory_mib:
            raise InvalidSpec(f"memory must be at least {self.settings.min_memory_mib} MiB for the guest kernel")
        if spec.vcpus < 1:
            raise InvalidSpec("vcpus must be at least 1")
        notify = on_phase or (lambda phase: None)
        timings: dict[str, float] = {}

        notify("pulling")
        prepared = self.image_store.prepare(
            spec.image,
            credentials=spec.credentials,
            tls_verify=spec.tls_verify,
            quota_limit_bytes=spec.disk_quota_left_bytes,
            quota_exempt_digests=spec.disk_quota_held_digests,
        )
        if on_image is not None:
            on_image(prepared)
        timings.update(prepared.timings_s)
        argv = resolve_argv(
            prepared.config, entrypoint=spec.entrypoint, command=spec.command, shell_command=spec.shell_command
        )

        notify("preparing")
        started = self._clock()
        initrd = self.initramfs()
        kernel = self.boot_kernel()
        virt_type = self.virt_type()
        timings["initramfs"] = round(self._clock() - started, 4)

        holder_ended = volume_holder_ended
        if self.settings.warm_pool and not directory.exists():
            from vmworker.warm_pool import claim_and_start

            warm = claim_and_start(self, spec, instance_id, prepared, argv, virt_type, timings, notify, holder_ended)
            if warm is not None:
                return warm
            timings.pop("claim", None)
        self._qemu_traversed_dir(directory)  # a crashed earlier attempt may have made it
        try:
            return self._start(
                spec, instance_id, directory, prepared, argv, kernel, initrd, virt_type, timings, notify, holder_ended
            )
        except BaseException:
            self.remove(instance_id)  # the reason and the console tail travel in the exception
            raise

    def _start(
        self, spec, instance_id, directory, prepared, argv, kernel, initrd, virt_type, timings, notify, holder_ended
    ) -> BootResult:
        """``prepared``: the PreparedImage; ``holder_ended``: boot's ``volume_holder_ended``."""
        name = spec.name or f"hvm-{instance_id[:8]}"
        volume_disks = self.volumes_prepare(spec.volumes, instance_id=instance_id, holder_ended=holder_ended)
        config_disk = self._write_instance_files(
            spec, instance_id, directory, prepared, argv, virt_type, volume_disks, instance_mac(instance_id, "user")
        )
        domain = DomainSpec(
            instance_id=instance_id,
            kernel=kernel,
            initrd=initrd,
            cmdline=KERNEL_CMDLINE,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            console_log=directory / CONSOLE_LOG,
            virt_type=virt_type,
            cpu_quota_pct=spec.cpu_quota_pct,
            disks=(
                DiskSpec(path=prepared.fs_path, serial=ROOTFS_SERIAL, readonly=True),
                DiskSpec(path=config_disk, serial=CONFIG_DISK_SERIAL, readonly=True),
                *volume_disks,
            ),
            channels=(
                ChannelSpec(name=LOG_PORT_NAME, path=directory / GUEST_LOG, kind="file"),
                ChannelSpec(name=CONTROL_PORT_NAME, path=self.control_socket(instance_id), kind="unix"),
            ),
            port_forwards=spec.ports,
            user_net_mac=instance_mac(instance_id, "user") if spec.ports else None,
            interfaces=(InterfaceSpec(network=spec.network.network.libvirt_name, mac=spec.network.mac),)
            if spec.network
            else (),
            metadata=self._domain_metadata(spec, name),
        )
        notify("booting")
        busy = busy_host_ports(spec.ports)
        if busy:
            raise host_port_busy(busy)
        started = self._clock()
        try:
            self._define_and_start(domain, spec.network)
        except DriverError as exc:
            if spec.ports and "host forwarding" in str(exc):  # taken between the check and QEMU's bind
                raise host_port_busy(busy_host_ports(spec.ports) or spec.ports) from exc
            raise
        timings["define"] = round(self._clock() - started, 4)
        self._wait_for_start(instance_id, directory, started, timings)
        logger.info("runtime.booted", extra={"instance_id": instance_id, "timings": timings})
        return BootResult(
            instance_id=instance_id,
            name=name,
            domain_name=domain.domain_name,
            image_digest=prepared.manifest_digest,
            virt_type=virt_type,
            timings_s=timings,
            ports=spec.ports,
            reused=False,
        )

    @staticmethod
    def _domain_metadata(spec: InstanceSpec, name: str) -> dict[str, str]:
        return {"name": name, **{k: v for k, v in spec.metadata.items() if k != "instance"}}

    def _write_instance_files(
        self, spec, instance_id, directory, prepared, argv, virt_type, volume_disks, user_mac, *, extra=None
    ) -> Path:
        """The config disk, the empty guest log and instance.json in ``directory``; returns the
        config disk. ``user_mac``: the published-ports NIC's MAC (the init finds it by it)."""
        name = spec.name or f"hvm-{instance_id[:8]}"
        hostname = spec.hostname or name.replace("_", "-")[:63].strip("-") or "hypervm"
        guest_config = GuestConfig(
            hostname=hostname,
            argv=argv,
            env=merge_env(prepared.config.env, spec.env),
            working_dir=spec.working_dir or prepared.config.working_dir or "/",
            user=spec.user or prepared.config.user or "0:0",
            rootfs_serial=ROOTFS_SERIAL,
            rootfs_type=prepared.fs_type,
            overlay_size_mib=spec.overlay_size_mib or self.settings.overlay_size_mib,
            stop_grace_s=spec.stop_grace_s if spec.stop_grace_s is not None else self.settings.stop_grace_s,
            # Both NICs carry fixed MACs: the init picks each by its MAC, never by eth0/eth1 order.
            network=dataclasses.replace(USER_NET_GUEST, mac=user_mac) if spec.ports else None,
            tenant_interface=GuestTenantInterface(mac=spec.network.mac, ip_cidr=spec.network.ip_cidr)
            if spec.network
            else None,
            volumes=tuple(
                GuestVolume(serial=disk.serial, name=volume.container_path)
                for disk, volume in zip(volume_disks, spec.volumes, strict=True)
            ),
        )
        config_disk = directory / "config.img"
        write_config_disk(guest_config, config_disk)
        self._qemu_readable_file(config_disk)  # it holds the app's environment (its secrets)
        Path(self.settings.socket_root).mkdir(mode=0o755, parents=True, exist_ok=True)
        self._qemu_writable_dir(self.socket_dir)
        if not (directory / GUEST_LOG).exists():
            (directory / GUEST_LOG).touch(mode=QEMU_READ_FILE_MODE)
            self._qemu_readable_file(directory / GUEST_LOG)
        _atomic_write_json(
            directory / INSTANCE_FILE,
            {
                "instance_id": instance_id,
                "name": name,
                "image": spec.image,
                "image_digest": prepared.manifest_digest,
                "argv": list(argv),
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
                "ports": [asdict(port) for port in spec.ports],
                "virt_type": virt_type,
                "created_at": time.time(),
                "metadata": dict(spec.metadata),
                "network": {
                    "network_id": spec.network.network.network_id,
                    "mac": spec.network.mac,
                    "ip_cidr": spec.network.ip_cidr,
                }
                if spec.network
                else None,
                "volumes": [asdict(volume) for volume in spec.volumes],
                **(extra or {}),
            },
        )
        return config_disk

    def _define_and_start(self, domain: DomainSpec, network: NetworkAttachment | None) -> None:
        if network is None:
            self.host.define_and_start(domain)
            return
        self.network_ensure(network.network)
        try:
            self.host.define_and_start(domain)
        except DriverError:
            # A stop on this host removes a network once no domain uses it; if that happened
            # between our ensure and our start, make it again and start once more.
            self.network_ensure(network.network)
            self.host.define_and_start(domain)

    def network_ensure(self, network: TenantNetwork) -> None:
        """Makes the tenant network on this libvirtd and notes that this runtime made it
        (``networks/<id>`` in the state dir): the sweep only ever judges networks it made,
        never those of another runtime sharing the libvirtd."""
        self.networks_dir.mkdir(mode=0o755, exist_ok=True)
        (self.networks_dir / network.network_id).touch()
        self.host.network_ensure(network)

    @property
    def networks_dir(self) -> Path:
        return self.state_dir / "networks"

    # --- persistent volumes (vmworker.storage) ----------------------------------------------

    def volume_pool(self, pool_name: str) -> StoragePool:
        """The host's dir pool, made (folder and libvirt pool) when first needed."""
        pool = StoragePool(name=pool_name, path=self.state_dir / VOLUMES_DIR)
        self._qemu_traversed_dir(pool.path)
        self.host.pool_ensure(pool)
        return pool

    def volumes_prepare(
        self,
        volumes: tuple[VolumeAttachment, ...],
        *,
        instance_id: str,
        holder_ended: Callable[[str], bool] | None = None,
    ) -> tuple[DiskSpec, ...]:
        """Each volume made through the pool API (a fresh sparse file: no earlier volume's blocks)
        and formatted once, or found again (one found without its file system is made afresh,
        never formatted in place); writable disks the guest finds by serial. Another VM
        of this host that still has one of them attached is destroyed first when
        ``holder_ended(its instance id)`` says its instance has ended (one marked lost while its
        host was cut off, not yet removed by the reconcile); otherwise the boot is refused
        (VolumeBusy): two VMs never mount one volume."""
        if not volumes:
            return ()
        attached = self._attached_disks(exclude_instance_id=instance_id)
        disks = []
        for index, volume in enumerate(volumes):
            self.volume_pool(volume.pool_name)
            storage = StorageVolume(name=volume.volume_name, capacity_bytes=volume.size_mib * MIB)
            path, created = self.host.volume_create(volume.pool_name, storage)
            holder = attached.get(path)
            if holder is not None:
                if holder_ended is None or not holder_ended(holder.instance_id):
                    raise VolumeBusy(
                        f"volume {volume.container_path} is still attached to VM {holder.name}, "
                        "which has not been destroyed yet"
                    )
                logger.warning(
                    "runtime.volume_holder_removed",
                    extra={"instance_id": instance_id, "holder_instance_id": holder.instance_id},
                )
                self.remove(holder.instance_id)
                attached = {key: guest for key, guest in attached.items() if guest.instance_id != holder.instance_id}
            if not created and not is_formatted(Path(path)):
                # Half-made by an earlier boot, or its superblock overwritten from inside: made
                # again as a fresh file, so the guest's bytes never reach mkfs's probes here.
                self.host.volume_delete(volume.pool_name, volume.volume_name)
                path, created = self.host.volume_create(volume.pool_name, storage)
            try:
                volume_format(Path(path))
            except (VolumeFormatError, OSError) as exc:
                if created:
                    self.host.volume_delete(volume.pool_name, volume.volume_name)
                raise BootFailed(f"volume {volume.container_path}: {exc}") from exc
            disks.append(DiskSpec(path=Path(path), serial=f"{VOLUME_SERIAL_PREFIX}{index}", readonly=False))
        return tuple(disks)

    def _attached_disks(self, *, exclude_instance_id: str) -> dict[str, Guest]:
        """Disk path -> the guest that has it, of this libvirtd's running (or paused) VMs but one."""
        attached = {}
        for guest in self.host.list_guests():
            if guest.instance_id == exclude_instance_id or guest.state not in (GuestState.RUNNING, GuestState.PAUSED):
                continue
            try:
                disks = guest.config().devices_of(DiskConfig)
            except DriverError:
                continue  # gone while we looked
            attached.update({disk.source_path: guest for disk in disks})
        return attached

    def volume_delete(self, pool_name: str, volume_name: str) -> bool:
        """Through the pool API; True when it is gone (or was never made)."""
        return self.host.volume_delete(pool_name, volume_name)

    def volume_used_bytes(self, pool_name: str, volume_name: str) -> int | None:
        return self.host.volume_allocation(pool_name, volume_name)

    def _wait_for_start(self, instance_id: str, directory: Path, created_at: float, timings: dict) -> None:
        """Until the init reports ``started``; records boot-to-init and init-to-exec."""
        deadline = created_at + self.settings.boot_timeout_s
        parser = GuestLogParser()
        init_ms = None
        errors: list[str] = []
        with open(directory / GUEST_LOG, "rb") as log:
            while True:
                for record in parser.feed(log.read()):
                    if not isinstance(record, GuestEvent):
                        continue
                    if record.name == "init" and "boot_to_init" not in timings:
                        timings["boot_to_init"] = round(self._clock() - created_at, 4)
                        init_ms = record.monotonic_ms
                    elif record.name == "started":
                        if init_ms is not None:
                            timings["init_to_exec"] = round((record.monotonic_ms - init_ms) / 1000, 4)
                        timings["boot_to_exec"] = round(self._clock() - created_at, 4)
                        return
                    elif record.name == "error":
                        errors.append(record.value)
                    elif record.name == "exit":
                        self._destroy_domain(instance_id)
                        reason = "; ".join(errors) or f"the guest exited with code {record.code} before the app started"
                        raise BootFailed(reason, console_tail=self.console_tail(instance_id), exit_code=record.code)
                if self._guest_state(instance_id) in STOPPED_STATES:
                    for record in parser.feed(log.read()) + parser.close():
                        if isinstance(record, GuestEvent) and record.name == "started":
                            return
                    raise BootFailed(
                        "the VM stopped before the app started", console_tail=self.console_tail(instance_id)
                    )
                if self._clock() > deadline:
                    self._destroy_domain(instance_id)
                    raise BootFailed(
                        f"the app did not start within {self.settings.boot_timeout_s:.0f} s",
                        console_tail=self.console_tail(instance_id),
                    )
                time.sleep(0.02)

    def _resume_boot(self, instance_id: str) -> BootResult:
        """A boot re-delivered for an instance that exists: report it, never make a second VM."""
        info = self._read_instance(instance_id)
        directory = self.instance_dir(instance_id)
        state = self._guest_state(instance_id)
        timings: dict[str, float] = {}
        if state not in STOPPED_STATES:
            self._wait_for_start(instance_id, directory, self._clock(), timings)
        elif self.status(instance_id).state != "exited":
            raise BootFailed("the VM of this instance is gone", console_tail=self.console_tail(instance_id))
        return BootResult(
            instance_id=instance_id,
            name=info["name"],
            domain_name=f"hvm-{instance_id}",
            image_digest=info["image_digest"],
            virt_type=info["virt_type"],
            timings_s=timings,
            ports=tuple(PortForward(**port) for port in info["ports"]),
            reused=True,
        )

    def _read_instance(self, instance_id: str) -> dict:
        try:
            return json.loads((self.instance_dir(instance_id) / INSTANCE_FILE).read_text())
        except FileNotFoundError:
            raise InstanceNotFound(f"no instance {instance_id}") from None

    def _guest_state(self, instance_id: str) -> GuestState:
        guest = self.host.lookup(instance_id)
        return GuestState.ABSENT if guest is None else guest.state

    def _destroy_domain(self, instance_id: str) -> None:
        try:
            guest = self.host.lookup(instance_id)
            if guest is not None:
                guest.destroy()
                guest.undefine()
        except DriverError:
            logger.warning("runtime.destroy_failed", extra={"instance_id": instance_id}, exc_info=True)

    def request_stop(self, instance_id: str, *, grace_s: float | None = None) -> StopRequest:
        """Asks the init to stop the app (SIGTERM now, SIGKILL after ``grace_s``) and returns:
        bounded by STOP_CHANNEL_TIMEOUT_S, never by the grace. The request and its deadline go
        to the instance folder first (a running check gives the control channel up when it
        appears); a request that finds one there already returns it unchanged: the first
        deadline stands, and the guest is not asked again. Raises InstanceNotFound."""
        self._read_instance(instance_id)
        path = self.instance_dir(instance_id) / STOP_REQUEST_FILE
        grace = grace_s if grace_s is not None else self.settings.stop_grace_s
        now = time.time()
        request = StopRequest(requested_at=now, deadline=now + max(0.0, grace) + STOP_KILL_MARGIN_S)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        write_private(tmp, json.dumps(asdict(request)).encode())
        try:
            os.link(tmp, path)  # only the first request is recorded, whole, even when two race
        except FileExistsError:
            return self.stop_request(instance_id) or request
        finally:
            tmp.unlink(missing_ok=True)
        if self._guest_state(instance_id) not in STOPPED_STATES:
            try:
                with self._control_connect(instance_id, timeout_s=STOP_CHANNEL_TIMEOUT_S) as control:
                    control.sendall(STOP_COMMAND)
            except OSError:
                # The deadline still holds: the VM is destroyed when it passes.
                logger.warning("runtime.stop_channel_failed", extra={"instance_id": instance_id}, exc_info=True)
        logger.info("runtime.stop_requested", extra={"instance_id": instance_id, "grace_s": grace})
        return request

    def stop_request(self, instance_id: str) -> StopRequest | None:
        """The recorded stop request, if any. One that cannot be read (an empty marker of an
        older version, a torn file) counts from its file's time with the default grace."""
        path = self.instance_dir(instance_id) / STOP_REQUEST_FILE
        try:
            data = json.loads(path.read_bytes()[:4096])
            return StopRequest(requested_at=float(data["requested_at"]), deadline=float(data["deadline"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            try:
                since = path.stat().st_mtime
            except FileNotFoundError:
                return None
            return StopRequest(requested_at=since, deadline=since + self.settings.stop_grace_s + STOP_KILL_MARGIN_S)

    def stop_progress(self, instance_id: str, *, now: float | None = None) -> InstanceStatus | None:
        """For an instance asked to stop: its final status once the app exited, its VM is gone,
        or the deadline passed (then the VM is destroyed: the hard kill); what is left of its
        domain and its tenant network go, and its end is recorded. None while the grace runs,
        and for an instance never asked to stop. Raises InstanceNotFound."""
        info = self._read_instance(instance_id)
        if self._read_end(instance_id) is not None:
            return self.status(instance_id)
        request = self.stop_request(instance_id)
        if request is None:
            return None
        if self._guest_state(instance_id) not in STOPPED_STATES:
            exited = self._read_log_progress(instance_id).exit_code is not None
            overdue = (time.time() if now is None else now) >= request.deadline
            if not (exited or overdue):
                return None
            if not exited:
                logger.warning("runtime.stop_deadline_passed", extra={"instance_id": instance_id})
        self._destroy_domain(instance_id)
        self._release_network(info)
        logger.info("runtime.stopped", extra={"instance_id": instance_id, "instance_name": info["name"]})
        return self._record_end(instance_id)

    def stop(self, instance_id: str, *, timeout_s: float | None = None) -> InstanceStatus:
        """SIGTERM to the app (through the init), SIGKILL after the grace (``timeout_s``), destroy
        after its deadline; waits for the end (the operator CLI's stop, not the host worker's)."""
        request = self.request_stop(instance_id, grace_s=timeout_s)
        while (status := self.stop_progress(instance_id)) is None:
            time.sleep(0.05 if time.time() < request.deadline else 0)
        return status

    def release(self, instance_id: str) -> InstanceStatus:
        """The instance ended by itself (its app exited, its QEMU died): destroy what is left of
        its domain, free its tenant network on this host, record its end. Raises InstanceNotFound."""
        info = self._read_instance(instance_id)
        self._destroy_domain(instance_id)
        self._release_network(info)
        return self._record_end(instance_id)

    def remove(self, instance_id: str) -> None:
        """Destroy the domain (if any) and delete the instance's files."""
        try:
            info: dict | None = self._read_instance(instance_id)
        except (InstanceNotFound, ValueError):
            info = None
        self._destroy_domain(instance_id)
        if info is not None:
            self._release_network(info)
        self._remove_files(instance_id)

    def _remove_files(self, instance_id: str) -> None:
        self.control_socket(instance_id).unlink(missing_ok=True)
        relay_socket_path(self.control_socket(instance_id)).unlink(missing_ok=True)
        directory = self.instance_dir(instance_id)
        if directory.is_symlink():  # started in a pooled VM: its files live in the pool's folder
            pool_directory = directory.resolve()
            directory.unlink()
            self.control_socket(pool_directory.name).unlink(missing_ok=True)
            shutil.rmtree(pool_directory, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
        self._log_progress.pop(str(uuid.UUID(instance_id)), None)

    def _release_network(self, info: dict) -> None:
        """The instance's tenant network goes from this host once no domain here uses it."""
        attachment = info.get("network")
        if attachment:
            self._remove_network_if_unused(TenantNetwork.for_network_id(attachment["network_id"]))

    def _remove_network_if_unused(self, network: TenantNetwork) -> bool:
        try:
            return self.host.network_remove(network, only_if_unused=True)
        except DriverError:
            logger.warning("runtime.network_remove_failed", extra={"network": network.libvirt_name}, exc_info=True)
            return False

    def network_sweep(self, *, wanted_network_ids: Collection[str]) -> list[str]:
        """Removes the tenant networks this runtime made that no domain uses and that are not
        wanted (the portal's networks some live instance holds an address on; a boot between
        its network_ensure and its domain start is one of those); returns their libvirt names.
        Only networks of our scheme this runtime made are looked at: ``default`` and the
        networks of other runtimes (other portals) sharing the libvirtd stay."""
        wanted = {str(uuid.UUID(str(network_id))) for network_id in wanted_network_ids}
        on_host = set(self.host.list_networks())
        made = self.networks_dir.iterdir() if self.networks_dir.is_dir() else ()
        removed = []
        for marker in made:
            try:
                network = TenantNetwork.for_network_id(marker.name)
            except ValueError:
                continue
            if network.network_id in wanted:
                continue
            if network.libvirt_name not in on_host:
                marker.unlink(missing_ok=True)  # gone already (a stop removed it)
            elif self._remove_network_if_unused(network):
                marker.unlink(missing_ok=True)
                removed.append(network.libvirt_name)
        if removed:
            logger.info("runtime.networks_swept", extra={"networks": removed})
        return removed

    def live_instance_ids(self) -> set[str]:
        """Instances of this state dir whose domain exists: one libvirt listing, no log reads."""
        domains = {guest.instance_id for guest in self.host.list_guests()}
        return {path.name for path in self.instances_dir.iterdir() if path.name in domains}

    def guest_usage(self) -> dict[str, GuestStats]:
        """CPU and memory figures of this state dir's running instances (one bulk stats call):
        several hosts may share one libvirtd, and each measures only its own."""
        return {
            instance_id: stats
            for instance_id, stats in self.host.guest_stats().items()
            if (self.instances_dir / instance_id).is_dir()
        }

    def prune_ended(self, *, retention_s: float, keep: Collection[str] = ()) -> list[str]:
        """Deletes the folders of instances that ended more than ``retention_s`` ago (their
        record, console tail and failure reason live on in the portal's database); returns
        their ids. An instance in ``keep`` or with a domain stays whatever its files say. One
        without an end record (it vanished before it was released) counts from its last write."""
        cutoff = time.time() - retention_s
        spared = {str(instance_id) for instance_id in keep} | self.live_instance_ids()
        pruned = []
        for path in self.instances_dir.iterdir():
            if path.name in spared or not _is_instance_dir_name(path.name):
                continue
            try:
                ended_at = _ended_at(path)
                if ended_at is not None and ended_at < cutoff:
                    self._remove_files(path.name)
                    pruned.append(path.name)
            except Exception:  # one folder's garbage never stops the host's work for the others
                logger.warning("runtime.prune_failed", extra={"instance_id": path.name}, exc_info=True)
        if pruned:
            logger.info("runtime.instances_pruned", extra={"count": len(pruned)})
        return pruned

    def _record_end(self, instance_id: str) -> InstanceStatus:
        status = self._live_status(self._read_instance(instance_id))
        _atomic_write_json(
            self.instance_dir(instance_id) / ENDED_FILE,
            {
                "state": status.state,
                "exit_code": status.exit_code,
                "oom": status.oom,
                "errors": list(status.errors),
                "ended_at": time.time(),
                "log_inode": _inode(self.instance_dir(instance_id) / GUEST_LOG),
            },
        )
        self._log_progress.pop(status.instance_id, None)
        return status

    def records(self, instance_id: str) -> list[GuestRecord]:
        """Every record of the kept log files (virtlogd's rotated ones first)."""
        parser = GuestLogParser()
        records = []
        for _, path in log_files(self.instance_dir(instance_id) / GUEST_LOG):
            records += parser.feed(path.read_bytes())
        return records + parser.close()

    def status(self, instance_id: str) -> InstanceStatus:
        info = self._read_instance(instance_id)
        ended = self._read_end(instance_id)
        if ended is None:
            status = self._live_status(info)
            if status.state == "exited" and self._guest_state(instance_id) in STOPPED_STATES:
                return self._record_end(instance_id)  # final: the log will not grow again
            return status
        return instance_status_from(
            info, state=ended["state"], exit_code=ended["exit_code"], oom=ended["oom"], errors=tuple(ended["errors"])
        )

    def _read_end(self, instance_id: str) -> dict | None:
        """The end record, if it is about the guest log there now (an instance made again has a
        new one) and well-formed (else the status is read again from the log)."""
        directory = self.instance_dir(instance_id)
        try:
            ended = json.loads((directory / ENDED_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            ended = None
        if not is_end_record(ended):
            logger.warning("runtime.end_record_invalid", extra={"instance_id": instance_id})
            return None
        return ended if ended["log_inode"] == _inode(directory / GUEST_LOG) else None

    def _live_status(self, info: dict) -> InstanceStatus:
        progress = self._read_log_progress(info["instance_id"])
        guest_state = self._guest_state(info["instance_id"])
        if progress.exit_code is not None:
            state = "exited"
        elif guest_state in STOPPED_STATES:
            state = "lost"
        else:
            state = "running" if progress.started else "booting"
        return instance_status_from(
            info, state=state, exit_code=progress.exit_code, oom=progress.oom, errors=progress.errors
        )

    def _read_log_progress(self, instance_id: str) -> LogProgress:
        """The events of the guest log, reading only what was appended since the last call,
        across virtlogd's rotation (vmworker.log_files): the file being read is followed by its
        inode to its end, then the newer ones."""
        path = self.instance_dir(instance_id) / GUEST_LOG
        progress = self._log_progress.pop(instance_id, None)
        if progress is not None and not self._same_tail(path, progress):
            progress = None  # the instance made again: a new log, whatever inode it got
        progress = progress or progress_from(first_position(path))
        for _ in range(LOG_READ_MAX_TURNS):  # bounded: status() reads at most this many chunks
            if progress.inode == 0:
                break  # no log yet
            data, position = log_read(path, LogPosition(progress.inode, progress.offset), LOG_READ_CHUNK_BYTES)
            if position is None:  # its file rotated out before it was read: start over
                progress = progress_from(first_position(path))
                continue
            if not data:
                if position.inode == progress.inode:
                    break
                progress.inode, progress.offset, progress.tail = position.inode, 0, b""
                continue
            self.log_bytes_read += len(data)
            progress.offset = position.offset
            progress.tail = (progress.tail + data)[-LOG_TAIL_CHECK_BYTES:]
            progress.read(data)
        self._log_malformed(instance_id, progress)
        self._log_progress[instance_id] = progress
        while len(self._log_progress) > STATUS_CACHE_INSTANCES:
            self._log_progress.popitem(last=False)
        return progress

    def _log_malformed(self, instance_id: str, progress: LogProgress) -> None:
        """Says that a guest wrote records that are not well-formed: at most once a
        MALFORMED_LOG_EVERY_S per instance, however many it writes."""
        now = self._clock()
        if (
            progress.malformed > progress.malformed_logged
            and now - progress.malformed_logged_at >= MALFORMED_LOG_EVERY_S
        ):
            logger.warning(
                "runtime.guest_records_malformed",
                extra={"instance_id": instance_id, "count": progress.malformed - progress.malformed_logged},
            )
            progress.malformed_logged, progress.malformed_logged_at = progress.malformed, now

    def _same_tail(self, path: Path, progress: LogProgress) -> bool:
        """Whether the bytes before the offset are still those read (checked while the file
        read is the current one; a rotated file is final)."""
        try:
            with open(path, "rb") as log:
                stat = os.fstat(log.fileno())
                if stat.st_ino != progress.inode:
                    return True  # rotated (log_read follows it) or gone (log_read says so)
                if stat.st_size < progress.offset:
                    return False
                if not progress.tail:
                    return progress.offset == 0
                log.seek(progress.offset - len(progress.tail))
                tail = log.read(len(progress.tail))
        except FileNotFoundError:
            return True
        self.log_bytes_read += len(tail)
        return tail == progress.tail

    def exec_check(self, instance_id: str, command: str, timeout_s: float) -> int:
        """Runs ``/bin/sh -c command`` in the instance's container (the app's env, user and
        working dir) and returns its exit code. The guest kills it after ``timeout_s``.
        Raises ExecCheckFailed when it could not run to its end, InstanceNotFound."""
        self._read_instance(instance_id)
        stop_requested = self.instance_dir(instance_id) / STOP_REQUEST_FILE
        if self._guest_state(instance_id) in STOPPED_STATES:
            raise ExecCheckFailed("the VM is not running")
        if stop_requested.exists():
            raise ExecCheckFailed("the instance is stopping")
        request_id = uuid.uuid4().hex
        try:
            request = exec_request(request_id, command, timeout_s)
        except ExecRequestInvalid as exc:
            raise ExecCheckFailed(str(exc)) from None
        wait_s = timeout_s + EXEC_REPLY_MARGIN_S
        deadline = self._clock() + wait_s
        try:
            with self._control_connect(instance_id, timeout_s=EXEC_REPLY_MARGIN_S) as control:
                control.sendall(request)
                pending = b""
                while (remaining := deadline - self._clock()) > 0:
                    if stop_requested.exists():  # closing the socket hands the channel to the stop
                        raise ExecCheckFailed("the instance is stopping")
                    control.settimeout(min(remaining, EXEC_STOP_POLL_S))
                    try:
                        chunk = control.recv(4096)
                    except TimeoutError:
                        continue
                    if not chunk:
                        raise ExecCheckFailed("the guest closed its control channel")
                    *lines, pending = (pending + chunk).split(b"\n")
                    pending = pending[-8192:]  # event lines are short; never grow without bound
                    for line in lines:
                        result = parse_exec_result(line)
                        if result is not None and result.request_id == request_id:
                            return _exec_exit_code(result, timeout_s)
        except TimeoutError:
            pass
        except OSError as exc:
            raise ExecCheckFailed(f"the control channel is unreachable: {exc}") from None
        raise ExecCheckFailed(f"no answer from the guest within {wait_s:.0f} s")

    def list_instances(self) -> list[InstanceStatus]:
        """Every instance whose status can be read; one whose records are garbage is logged and
        left out (it never hides the others)."""
        statuses = []
        for path in self.instances_dir.iterdir():
            if (path / INSTANCE_FILE).exists():
                try:
                    statuses.append(self.status(path.name))
                except Exception:
                    logger.warning("runtime.status_unreadable", extra={"instance_id": path.name}, exc_info=True)
        return sorted(statuses, key=lambda status: status.created_at)

    def find(self, name_or_id: str) -> str:
        """An instance id from a name, a full id or a unique id prefix."""
        matches = []
        for path in self.instances_dir.iterdir():
            if not (path / INSTANCE_FILE).exists():
                continue
            if path.name == name_or_id:
                return path.name
            info = json.loads((path / INSTANCE_FILE).read_text())
            if info["name"] == name_or_id or path.name.startswith(name_or_id):
                matches.append(path.name)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise InstanceNotFound(f"no instance named {name_or_id!r}")
        raise InstanceNotFound(f"{name_or_id!r} matches {len(matches)} instances; give more of the id")

    def follow(self, instance_id: str, *, poll_s: float = 0.05, from_start: bool = True) -> Iterator[GuestRecord]:
        """Every record, then new ones as the guest writes them, until its ``exit`` record or
        until its domain is gone and the file is drained."""
        path = self.instance_dir(instance_id) / GUEST_LOG
        parser = GuestLogParser()
        with open(path, "rb") as log:
            if not from_start:
                log.seek(0, os.SEEK_END)
            while True:
                chunk = log.read()
                for record in parser.feed(chunk):
                    yield record
                    if isinstance(record, GuestEvent) and record.name == "exit":
                        return
                if not chunk and self._guest_state(instance_id) in STOPPED_STATES:
                    yield from parser.feed(log.read())
                    yield from parser.close()
                    return
                time.sleep(poll_s)

    def console_tail(self, instance_id: str, *, max_bytes: int = CONSOLE_TAIL_BYTES) -> str:
        path = self.instance_dir(instance_id) / CONSOLE_LOG
        try:
            with open(path, "rb") as console:
                console.seek(max(0, os.fstat(console.fileno()).st_size - max_bytes))
                # Guest bytes, bound for the database (no NUL) and a page (no escape sequences).
                return safe_text(console.read(max_bytes), keep_newlines=True)
        except FileNotFoundError:
            return ""


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _is_instance_dir_name(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _ended_at(directory: Path) -> float | None:
    """When the instance ended: its end record's time, else its files' last write (None: no files)."""
    try:
        ended_at = json.loads((directory / ENDED_FILE).read_bytes())["ended_at"]
        if type(ended_at) in (int, float):
            return ended_at
    except (OSError, ValueError, KeyError, TypeError):
        pass
    times = []
    for name in (INSTANCE_FILE, GUEST_LOG, CONSOLE_LOG):
        try:
            times.append((directory / name).stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(times, default=None)


def _exec_exit_code(result: ExecResult, timeout_s: float) -> int:
    if result.outcome == "exit" and result.exit_code is not None:
        return result.exit_code
    if result.outcome == "timeout":
        raise ExecCheckFailed(f"the command did not finish within {timeout_s:g} s (killed)")
    raise ExecCheckFailed(result.message or "the guest refused the command")


__all__ = [
    "BootFailed",
    "BootResult",
    "ExecCheckFailed",
    "HostPortBusy",
    "HyperVMRuntime",
    "ImageError",
    "InstanceNotFound",
    "InstanceSpec",
    "InstanceStatus",
    "InvalidSpec",
    "NothingToRun",
    "RuntimeSettings",
    "StopRequest",
]
