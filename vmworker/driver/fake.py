"""A stateful in-memory driver with Host's and Guest's interface, for fast tests of callers.

Contract: passes the same contract suite as ``Host`` (tests/vmworker/driver/test_contract.py).
It is not a stub: it renders the config it is given to XML and PARSES that XML back (as libvirt
would), keeps domains in a dict by UUID, refuses what libvirt refuses (a taken name, an unknown
domain, a missing kernel/initrd/disk at start), lists only domains with our metadata,
applies ``on_poweroff`` when a test simulates the guest powering itself off, and accounts each
running domain's CPU time from its (settable) load as the clock runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vmworker.driver.config import DiskConfig, DomainConfig, InstanceMetadataConfig, InterfaceConfig
from vmworker.driver.designer import (
    METADATA_INSTANCE_KEY,
    POOL_BLANK,
    POOL_CLAIMED,
    POOL_METADATA_KEY,
    DesignPolicy,
    cputune_for,
    design_domain,
)
from vmworker.driver.errors import DomainExists, DomainNotFound, DriverError
from vmworker.driver.guest import STOPPED_STATES, GuestState, GuestStats
from vmworker.driver.host import HostCapabilities, LifecycleCallback
from vmworker.driver.spec import DomainSpec
from vmworker.network.tenant import NETWORK_NAME_PREFIX, NetworkConfig, TenantNetwork
from vmworker.storage.pool import StoragePool, StorageVolume

FAKE_URI = "fake:///hypervm"
IDLE_CPU_LOAD = 0.01  # an idle guest's share of one CPU: its clock, its init


@dataclass
class _FakeDomain:
    xml: str
    config: DomainConfig
    persistent: bool
    running: bool = False
    events: list[str] = field(default_factory=list)
    # CPU accounting: cpu_time_ns as of load_since (monotonic), and the load since then (CPUs).
    cpu_time_ns: int = 0
    load_since: float = 0.0
    cpu_load: float = IDLE_CPU_LOAD
    rss_bytes: int | None = None  # None: a quarter of its memory, what an idle HyperVM touches
    paused: bool = False
    hotplugged: list[str] = field(default_factory=list)  # device XML attached live, in order
    monitor_commands: list[str] = field(default_factory=list)

    def cpu_time_now(self) -> int:
        return self.cpu_time_ns + int((time.monotonic() - self.load_since) * self.cpu_load * 1e9)


class FakeHost:
    def __init__(
        self,
        *,
        cpus: int = 2,
        memory_mib: int = 4096,
        design_policy: DesignPolicy | None = None,
        check_paths: bool = True,
    ) -> None:
        self.uri = FAKE_URI
        self.design_policy = design_policy or DesignPolicy()
        self._cpus = cpus
        self._memory_mib = memory_mib
        self._check_paths = check_paths
        self._domains: dict[str, _FakeDomain] = {}
        self._networks: dict[str, NetworkConfig] = {}  # libvirt name -> parsed XML (all active)
        self._pools: dict[str, StoragePool] = {}  # name -> parsed XML; volumes are real files in its path
        self._lock = threading.RLock()
        self._lifecycle_callbacks: list[LifecycleCallback] = []

    def __repr__(self) -> str:
        return f"FakeHost({len(self._domains)} domains)"

    def close(self) -> None:
        pass

    # --- Host interface --------------------------------------------------------------------

    def define_and_start(self, domain: DomainSpec | DomainConfig, *, persistent: bool = False) -> FakeGuest:
        config = design_domain(domain, self.design_policy) if isinstance(domain, DomainSpec) else domain
        with self._lock:
            existing = self.lookup(config.uuid)
            if existing is not None:
                if existing.name != config.name:
                    raise DomainExists(f"UUID {config.uuid} belongs to domain {existing.name}, not {config.name}")
                return existing
            parsed = self._define(config.to_xml(), persistent=persistent)
            self._start(parsed)
            return FakeGuest(self, instance_id=parsed.config.uuid, name=parsed.config.name)

    def lookup(self, instance_id: str) -> FakeGuest | None:
        with self._lock:
            domain = self._domains.get(_normalise_uuid(instance_id)) or self._claimed_domain(instance_id)
            if domain is None:
                return None
            return FakeGuest(self, instance_id=domain.config.uuid, name=domain.config.name)

    def _claimed_domain(self, instance_id: str) -> _FakeDomain | None:
        for domain in self._domains.values():
            values = domain.config.metadata.values if domain.config.metadata else {}
            if values.get(POOL_METADATA_KEY) == POOL_CLAIMED and values.get(METADATA_INSTANCE_KEY) == instance_id:
                return domain
        return None

    def suspend(self, instance_id: str) -> None:
        with self._lock:
            self._require(instance_id).paused = True

    def resume(self, instance_id: str) -> None:
        with self._lock:
            self._require(instance_id).paused = False

    def attach_device(self, instance_id: str, device_xml: str) -> None:
        with self._lock:
            self._require(instance_id).hotplugged.append(device_xml)

    def monitor_command(self, instance_id: str, command: str) -> str:
        with self._lock:
            self._require(instance_id).monitor_commands.append(command)
            return ""

    def set_cpu_quota(self, instance_id: str, cpu_quota_pct: int) -> None:
        with self._lock:
            self._require(instance_id).config.cputune = cputune_for(cpu_quota_pct)

    def claim_metadata(self, pool_id: str, values: dict[str, str]) -> None:
        with self._lock:
            config = self._require(pool_id).config
            config.metadata = InstanceMetadataConfig(values={**values, POOL_METADATA_KEY: POOL_CLAIMED})

    def get_guest(self, instance_id: str) -> FakeGuest:
        guest = self.lookup(instance_id)
        if guest is None:
            raise DomainNotFound(f"no domain for instance {instance_id}")
        return guest

    def list_guests(self, *, blank: bool = False) -> list[FakeGuest]:
        with self._lock:
            return sorted(
                (
                    FakeGuest(self, instance_id=domain.config.uuid, name=domain.config.name)
                    for domain in self._domains.values()
                    if domain.config.metadata is not None
                    and (domain.config.metadata.values.get(POOL_METADATA_KEY) == POOL_BLANK) == blank
                ),
                key=lambda guest: guest.name,
            )

    def guest_stats(self) -> dict[str, GuestStats]:
        with self._lock:
            return {
                uuid_: _stats(domain)
                for uuid_, domain in self._domains.items()
                if domain.running and domain.config.metadata is not None
            }

    def capabilities(self) -> HostCapabilities:
        return HostCapabilities(cpus=self._cpus, memory_mib=self._memory_mib, virt_types=("kvm", "qemu"))

    def register_lifecycle_callback(self, callback: LifecycleCallback) -> None:
        self._lifecycle_callbacks.append(callback)

    def network_ensure(self, network: TenantNetwork) -> None:
        with self._lock:
            parsed = NetworkConfig.parse_str(NetworkConfig.for_network(network).to_xml())
            for other in self._networks.values():
                if other.bridge == parsed.bridge and other.name != parsed.name:
                    raise DriverError(f"ensure network {parsed.name}: bridge {parsed.bridge} is in use")
            self._networks.setdefault(parsed.name, parsed)

    def network_remove(self, network: TenantNetwork, *, only_if_unused: bool = True) -> bool:
        with self._lock:
            in_use = any(
                interface.network == network.libvirt_name
                for domain in self._domains.values()
                for interface in domain.config.devices_of(InterfaceConfig)
            )
            if only_if_unused and in_use:
                return False
            self._networks.pop(network.libvirt_name, None)
            return True

    def list_networks(self) -> list[str]:
        with self._lock:
            return sorted(name for name in self._networks if name.startswith(NETWORK_NAME_PREFIX))

    def pool_ensure(self, pool: StoragePool) -> None:
        with self._lock:
            parsed = StoragePool.parse_str(pool.to_xml())
            existing = self._pools.setdefault(parsed.name, parsed)
            if existing != parsed:
                raise DriverError(f"ensure storage pool {pool.name}: pool {pool.name} exists with another path")
            if not parsed.path.is_dir():
                raise DriverError(f"ensure storage pool {pool.name}: cannot open directory '{parsed.path}'")

    def _pool(self, pool_name: str) -> StoragePool:
        pool = self._pools.get(pool_name)
        if pool is None:
            raise DriverError(f"storage pool not found: no storage pool with matching name '{pool_name}'")
        return pool

    def volume_create(self, pool_name: str, volume: StorageVolume) -> tuple[str, bool]:
        """As libvirt's dir backend: a new sparse file of the capacity, refused if the pool is unknown."""
        parsed = StorageVolume.parse_str(volume.to_xml())
        with self._lock:
            path = self._pool(pool_name).path / parsed.name
            if path.exists():
                return str(path), False
            with open(path, "xb") as created:
                created.truncate(parsed.capacity_bytes)
            path.chmod(0o600)
            return str(path), True

    def volume_delete(self, pool_name: str, volume_name: str) -> bool:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is not None:
                (pool.path / volume_name).unlink(missing_ok=True)
            return True

    def volume_allocation(self, pool_name: str, volume_name: str) -> int | None:
        with self._lock:
            pool = self._pools.get(pool_name)
            path = pool.path / volume_name if pool is not None else None
            if path is None or not path.exists():
                return None
            return path.stat().st_blocks * 512

    def list_volumes(self, pool_name: str) -> list[str]:
        with self._lock:
            pool = self._pools.get(pool_name)
            return sorted(p.name for p in pool.path.iterdir() if p.is_file()) if pool is not None else []

    # --- what tests use to play libvirt's or the guest's part ----------------------------------

    def define_foreign_domain(self, xml: str, *, running: bool = True) -> str:
        """A domain someone else made (no metadata of ours); returns its UUID."""
        with self._lock:
            domain = self._define(xml, persistent=True)
            if running:
                self._start(domain)
            return domain.config.uuid

    def simulate_guest_poweroff(self, instance_id: str) -> None:
        """The guest powered itself off: apply its ``on_poweroff`` like libvirt does."""
        with self._lock:
            domain = self._require(instance_id)
            if not domain.running:
                raise DriverError(f"instance {instance_id} is not running")
            if domain.config.on_poweroff != "destroy":
                raise DriverError("fake only models on_poweroff=destroy")
            self._stop(domain)

    def simulate_guest_usage(
        self, instance_id: str, *, cpu_load: float, rss_bytes: int | None = None, cpu_time_ns: int | None = None
    ) -> None:
        """The guest now keeps ``cpu_load`` CPUs busy (0.5: half of one) and holds ``rss_bytes``;
        ``cpu_time_ns`` sets the CPU time it used so far."""
        with self._lock:
            domain = self._require(instance_id)
            used = domain.cpu_time_now() if cpu_time_ns is None else cpu_time_ns
            domain.cpu_time_ns, domain.load_since = used, time.monotonic()
            domain.cpu_load, domain.rss_bytes = cpu_load, rss_bytes

    def domain_xml(self, instance_id: str) -> str:
        with self._lock:
            return self._require(instance_id).xml

    # --- internals, shared with FakeGuest --------------------------------------------------

    def _define(self, xml: str, *, persistent: bool) -> _FakeDomain:
        try:
            config = DomainConfig.parse_str(xml)
        except Exception as error:  # whatever the XML parser raises, libvirt would refuse it
            raise DriverError(f"define domain: invalid XML: {error}") from error
        if not config.name:
            raise DriverError("define domain: missing name")
        if config.memory_mib < 1:
            raise DriverError(f"define domain {config.name}: memory must be > 0")
        config.uuid = _normalise_uuid(config.uuid or str(uuid.uuid4()))
        for other in self._domains.values():
            if other.config.name == config.name and other.config.uuid != config.uuid:
                raise DomainExists(f"domain name {config.name} is taken by a domain with another UUID")
        domain = _FakeDomain(xml=xml, config=config, persistent=persistent)
        self._domains[config.uuid] = domain
        return domain

    def _start(self, domain: _FakeDomain) -> None:
        config = domain.config
        if self._check_paths:
            paths = [config.os.kernel, config.os.initrd]
            paths += [disk.source_path for disk in config.devices_of(DiskConfig)]
            missing = [path for path in paths if path and not Path(path).exists()]
            if missing:
                # Like Host.define_and_start: a definition that never started is removed again.
                del self._domains[config.uuid]
                raise DriverError(f"start domain {config.name}: cannot open {missing[0]}")
        absent = [i.network for i in config.devices_of(InterfaceConfig) if i.network not in self._networks]
        if absent:
            del self._domains[config.uuid]
            raise DriverError(f"start domain {config.name}: Network not found: no network with name '{absent[0]}'")
        domain.running = True
        domain.cpu_time_ns, domain.load_since = 0, time.monotonic()
        self._emit(domain, "started")

    def _stop(self, domain: _FakeDomain) -> None:
        domain.running = False
        if not domain.persistent:
            del self._domains[domain.config.uuid]
        self._emit(domain, "stopped")

    def _emit(self, domain: _FakeDomain, event: str) -> None:
        domain.events.append(event)
        for callback in list(self._lifecycle_callbacks):
            callback(domain.config.uuid, event)

    def _require(self, instance_id: str) -> _FakeDomain:
        domain = self._domains.get(_normalise_uuid(instance_id))
        if domain is None:
            raise DomainNotFound(f"no domain for instance {instance_id}")
        return domain


class FakeGuest:
    def __init__(self, host: FakeHost, *, instance_id: str, name: str) -> None:
        self._host = host
        self.instance_id = instance_id
        self.name = name

    def __repr__(self) -> str:
        return f"FakeGuest({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeGuest) and (self._host, self.instance_id) == (
            other._host,
            other.instance_id,
        )

    def __hash__(self) -> int:
        return hash(self.instance_id)

    @property
    def state(self) -> GuestState:
        with self._host._lock:
            domain = self._host._domains.get(self.instance_id)
            if domain is None:
                return GuestState.ABSENT
            if domain.running and domain.paused:
                return GuestState.PAUSED
            return GuestState.RUNNING if domain.running else GuestState.SHUTOFF

    @property
    def is_persistent(self) -> bool:
        with self._host._lock:
            return self._host._require(self.instance_id).persistent

    def destroy(self) -> None:
        with self._host._lock:
            domain = self._host._domains.get(self.instance_id)
            if domain is not None and domain.running:
                self._host._stop(domain)

    def undefine(self) -> None:
        with self._host._lock:
            domain = self._host._domains.get(self.instance_id)
            if domain is None or not domain.persistent:
                return
            if domain.running:
                domain.persistent = False  # libvirt: it becomes transient, gone when stopped
            else:
                del self._host._domains[self.instance_id]

    def config(self) -> DomainConfig:
        with self._host._lock:
            return DomainConfig.parse_str(self._host._require(self.instance_id).xml)

    def metadata(self) -> dict[str, str]:
        config = self.config()
        if config.metadata is None:
            raise DriverError(f"instance {self.instance_id} has no HyperVM metadata")
        return dict(config.metadata.values)

    def stats(self) -> GuestStats | None:
        with self._host._lock:
            domain = self._host._domains.get(self.instance_id)
            return _stats(domain) if domain is not None and domain.running else None

    def qemu_pid(self) -> int | None:
        return None

    def wait_until_stopped(self, *, timeout_s: float, poll_s: float = 0.05) -> GuestState:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state
            if state in STOPPED_STATES or time.monotonic() >= deadline:
                return state
            time.sleep(poll_s)


def _stats(domain: _FakeDomain) -> GuestStats:
    memory_bytes = domain.config.memory_mib * 1024 * 1024
    return GuestStats(
        cpu_time_ns=domain.cpu_time_now(),
        vcpus=domain.config.vcpus,
        memory_bytes=memory_bytes,
        rss_bytes=domain.rss_bytes if domain.rss_bytes is not None else memory_bytes // 4,
    )


def _normalise_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as error:
        raise DriverError(f"invalid UUID {value!r}") from error
