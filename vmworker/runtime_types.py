"""What the HyperVM runtime (vmworker.runtime) takes and gives: its settings, an instance's spec
and volumes, boot results, stop requests and statuses, and the errors it raises. Plain
dataclasses; the only I/O is the published-port probe (``busy_host_ports``)."""

from __future__ import annotations

import errno
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vmworker.driver.spec import PortForward
from vmworker.images.credentials import RegistryCredentials
from vmworker.network.tenant import NetworkAttachment

GiB = 1024**3


class RuntimeFailure(Exception):
    """Base of what the runtime raises; the message is one line a user understands."""


class InvalidSpec(RuntimeFailure):
    pass


class NothingToRun(InvalidSpec):
    """The image has no Entrypoint and no Cmd, and none was given."""


class BootFailed(RuntimeFailure):
    def __init__(self, message: str, *, console_tail: str = "", exit_code: int | None = None):
        super().__init__(message)
        self.console_tail = console_tail
        self.exit_code = exit_code


class InstanceNotFound(RuntimeFailure):
    pass


class HostPortBusy(RuntimeFailure):
    """A published host port is held by a program the runtime does not know about."""

    def __init__(self, message: str, *, ports: tuple[PortForward, ...]):
        super().__init__(message)
        self.ports = ports


def busy_host_ports(ports: tuple[PortForward, ...] | list[PortForward]) -> tuple[PortForward, ...]:
    """The forwards whose host address and port something already listens on (QEMU's user
    network binds them only when the VM starts, and then fails the whole start)."""
    busy = []
    for port in ports:
        family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
            try:
                probe.bind((port.host_ip, port.host_port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return tuple(busy)


def host_port_busy(ports) -> HostPortBusy:
    listed = ", ".join(f"{port.host_ip}:{port.host_port}" for port in ports)
    return HostPortBusy(f"host port {listed} is in use by a program outside the platform", ports=tuple(ports))


class VolumeBusy(RuntimeFailure):
    """A volume is still attached to another VM of this host (an ended instance's VM that its
    host has not destroyed yet, e.g. one marked lost while its host was cut off): two VMs never
    mount one volume. Transient: that VM goes (the reconcile removes it as an orphan), so the
    boot is tried again before it fails."""

    transient = True


class ExecCheckFailed(RuntimeFailure):
    """A command could not run to its end in the guest; the message says why."""


@dataclass(frozen=True)
class RuntimeSettings:
    state_dir: Path
    libvirt_uri: str = "qemu:///system"
    kernel: Path | None = None  # default: the newest /boot/vmlinuz-*-cloud-amd64
    modules_root: Path = Path("/lib/modules")
    virt_type: str | None = None  # "kvm" | "qemu" forces it; None: boot probe (cached)
    publish_host_ip: str = "127.0.0.1"
    image_cache_bytes: int = 20 * GiB
    max_image_bytes: int = 4 * GiB
    max_unpacked_bytes: int = 4 * GiB  # per image, enforced while unpacking (images/unpack.py)
    boot_timeout_s: float = 90.0
    overlay_size_mib: int = 256  # the writable layer of an instance whose spec names none
    stop_grace_s: int = 10
    min_memory_mib: int = 96  # the Debian cloud kernel does not start in 64 MiB
    qemu_user: str = "libvirt-qemu"
    # Unix socket paths are limited to 107 bytes, which a state dir of any length can
    # exceed: control sockets live under this short root instead (see control_socket()).
    socket_root: Path = Path("/run/hypervm")
    # Fast start (vmworker.warm_pool): claim a paused blank VM of the boot's shape when there
    # is one. The pool's target sizes are the host worker's (HYPERVM_WARM_POOL).
    warm_pool: bool = False


@dataclass(frozen=True)
class VolumeAttachment:
    """A persistent volume of the instance: made in ``pool_name`` at its first boot (ext4, once),
    found again at every later one, attached writable and mounted at MESOS_SANDBOX/``container_path``."""

    volume_id: str
    pool_name: str
    volume_name: str
    size_mib: int
    container_path: str


@dataclass(frozen=True)
class InstanceSpec:
    image: str
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = ""
    credentials: RegistryCredentials | None = None
    tls_verify: bool = True
    entrypoint: tuple[str, ...] | None = None  # replaces the image's Entrypoint (and drops its Cmd)
    command: tuple[str, ...] | None = None  # replaces the image's Cmd
    shell_command: str | None = None  # Marathon's cmd: run by /bin/sh -c, instead of both
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    vcpus: int = 1
    memory_mib: int = 128
    cpu_quota_pct: int | None = None
    ports: tuple[PortForward, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    stop_grace_s: int | None = None
    network: NetworkAttachment | None = None  # a NIC on a tenant network (vmworker.network)
    # The writable layer (a tmpfs of this size in the guest, over the read-only image): the
    # number the portal claims of the tenant's disk quota. None: the host's default.
    overlay_size_mib: int | None = None
    # What is left of the tenant's disk quota: the pull's unpack limit when smaller than the
    # platform's, except for the images the tenant holds already (charged once, see ImageStore).
    disk_quota_left_bytes: int | None = None
    disk_quota_held_digests: frozenset[str] = frozenset()
    volumes: tuple[VolumeAttachment, ...] = ()


@dataclass(frozen=True)
class BootResult:
    instance_id: str
    name: str
    domain_name: str
    image_digest: str
    virt_type: str
    timings_s: dict[str, float]
    ports: tuple[PortForward, ...]
    reused: bool  # the instance existed already (a re-delivered boot)
    start: str = "cold"  # "warm": claimed a pooled blank VM (vmworker.warm_pool)


@dataclass(frozen=True)
class StopRequest:
    """A stop asked of an instance: when, and when the host destroys its VM (wall clock, s)."""

    requested_at: float
    deadline: float


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    name: str
    image: str
    state: str  # "booting" | "running" | "exited" | "lost" (domain gone without an exit record)
    exit_code: int | None
    oom: bool
    errors: tuple[str, ...]
    ports: tuple[PortForward, ...]
    created_at: float
