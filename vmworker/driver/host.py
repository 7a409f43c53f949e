"""Host: owns one libvirt connection and is the ONE place that catches ``libvirt.libvirtError``.

Contract:
- the connection opens lazily, keeps itself alive (libvirt keepalive on a default event loop
  thread) and is reopened once when an operation fails because it dropped;
- every libvirt failure leaves as ``DomainNotFound``, ``DomainExists``, ``ConnectionFailed`` or
  ``DriverError`` with a message naming the operation and the domain;
- ``define_and_start`` is idempotent per instance: the instance UUID is the domain UUID and the
  domain name derives from it, so a second call returns the domain the first one made;
- ``list_guests`` returns only domains carrying our metadata element (``HYPERVM_NAMESPACE``);
  whatever else runs on the host is not ours and is never listed;
- ``guest_stats`` measures all our running domains with one bulk stats call (plus the metadata
  check per domain ``list_guests`` does), never per-domain polling of every figure.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from vmworker.driver.config import HYPERVM_NAMESPACE, DomainConfig, InstanceMetadataConfig
from vmworker.driver.designer import (
    METADATA_INSTANCE_KEY,
    POOL_BLANK,
    POOL_CLAIMED,
    POOL_METADATA_KEY,
    DesignPolicy,
    cputune_for,
    design_domain,
)
from vmworker.driver.errors import ConnectionFailed, DomainExists, DomainNotFound, DriverError
from vmworker.driver.guest import Guest, GuestState, GuestStats
from vmworker.driver.spec import DEFAULT_NAME_PREFIX, DomainSpec
from vmworker.network.tenant import NETWORK_NAME_PREFIX, NetworkConfig, TenantNetwork
from vmworker.storage.pool import StoragePool, StorageVolume

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Codes after which the connection itself may be gone (worth one reconnect + retry).
_CONNECTION_ERROR_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_ERR_AUTH_FAILED,
    }
)

_LIFECYCLE_EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

LifecycleCallback = Callable[[str, str], None]  # (instance_id, event name)

# Bulk domain stats the usage figures come from: cpu.time (ns), balloon.current/rss (KiB), vcpu.current.
_STATS_GROUPS = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """libvirt keepalive and domain events need an event loop; one daemon thread per process."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # Without this libvirt prints every error (even expected lookups) to stderr.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run_forever() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run_forever, name="libvirt-event-loop", daemon=True).start()
        _event_loop_started = True


@dataclass(frozen=True)
class HostCapabilities:
    cpus: int
    memory_mib: int
    virt_types: tuple[str, ...]  # domain types libvirt offers for x86_64 ("qemu", "kvm", ...)


class Host:
    def __init__(
        self,
        uri: str,
        *,
        keepalive_interval_s: int = 5,
        keepalive_count: int = 3,
        design_policy: DesignPolicy | None = None,
    ) -> None:
        self.uri = uri
        self._claimed: dict[str, str] = {}  # instance id -> UUID of the pooled VM claimed for it
        self.design_policy = design_policy or DesignPolicy()
        self._keepalive_interval_s = keepalive_interval_s
        self._keepalive_count = keepalive_count
        self._connection: libvirt.virConnect | None = None
        self._connection_lock = threading.RLock()
        self._lifecycle_callbacks: list[LifecycleCallback] = []
        self._event_callback_id: int | None = None

    def __repr__(self) -> str:
        return f"Host({self.uri!r})"

    # --- connection ------------------------------------------------------------------------

    def _connect(self) -> libvirt.virConnect:
        with self._connection_lock:
            connection = self._connection
            if connection is not None:
                try:
                    if connection.isAlive():
                        return connection
                except libvirt.libvirtError:
                    pass
                self._drop_connection()
            _ensure_event_loop()
            try:
                connection = libvirt.open(self.uri)
            except libvirt.libvirtError as error:
                raise ConnectionFailed(
                    f"cannot connect to libvirt at {self.uri}: {error.get_error_message()}"
                ) from error
            try:
                connection.setKeepAlive(self._keepalive_interval_s, self._keepalive_count)
            except libvirt.libvirtError as error:
                # The test driver has no keepalive; a local driver without it still works.
                logger.debug("driver.keepalive_unsupported", extra={"uri": self.uri, "e": error})
            try:
                self._event_callback_id = connection.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle_event, None
                )
            except libvirt.libvirtError as error:
                logger.debug("driver.events_unsupported", extra={"uri": self.uri, "e": error})
            self._connection = connection
            logger.info("driver.connected", extra={"uri": self.uri})
            return connection

    def _drop_connection(self) -> None:
        with self._connection_lock:
            connection, self._connection = self._connection, None
            callback_id, self._event_callback_id = self._event_callback_id, None
        if connection is None:
            return
        try:
            if callback_id is not None:
                # The registration holds a reference: without this the connection never closes.
                connection.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError:
            pass  # a dropped connection has no registrations left to remove
        try:
            connection.close()
        except libvirt.libvirtError:
            pass

    def close(self) -> None:
        self._drop_connection()

    def _call(self, action: str, operation: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``operation`` on the connection, reconnect once if it dropped, translate errors."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                return operation(connection)
            except libvirt.libvirtError as error:
                if attempt == 1 and self._connection_dropped(connection, error):
                    logger.warning("driver.reconnecting", extra={"uri": self.uri})
                    self._drop_connection()
                    continue
                raise self._translate(action, error) from error
        raise AssertionError("unreachable")

    @staticmethod
    def _connection_dropped(connection: libvirt.virConnect, error: libvirt.libvirtError) -> bool:
        if error.get_error_code() not in _CONNECTION_ERROR_CODES:
            return False
        try:
            return not connection.isAlive()
        except libvirt.libvirtError:
            return True

    @staticmethod
    def _translate(action: str, error: libvirt.libvirtError) -> DriverError:
        code = error.get_error_code()
        message = f"{action}: {error.get_error_message()}"
        if "virtlogd-sock" in message:
            message += " (libvirtd needs virtlogd for QEMU's logs: start it with `virtlogd -d`)"
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainNotFound(message)
        if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
            return ConnectionFailed(message)
        return DriverError(message)

    # --- domains ---------------------------------------------------------------------------

    def define_and_start(self, domain: DomainSpec | DomainConfig, *, persistent: bool = False) -> Guest:
        """Start the instance's domain, or return the one that already exists for it.

        Transient by default: on power-off the domain disappears and leaves nothing to clean
        up. An existing domain is returned whatever its state; whether to start a shut-off
        persistent one again is the caller's decision, not a side effect of a retried task.
        """
        config = design_domain(domain, self.design_policy) if isinstance(domain, DomainSpec) else domain
        existing = self.lookup(config.uuid)
        if existing is not None:
            if existing.name != config.name:
                raise DomainExists(f"UUID {config.uuid} belongs to domain {existing.name}, not {config.name}")
            return existing
        xml = config.to_xml()

        def create(connection: libvirt.virConnect) -> None:
            if not persistent:
                connection.createXML(xml, 0)
                return
            domain = connection.defineXML(xml)
            try:
                domain.create()
            except libvirt.libvirtError:
                # Leave no shut-off definition behind: it would pass for a started instance.
                try:
                    domain.undefine()
                except libvirt.libvirtError:
                    logger.warning("driver.undefine_after_failed_start_failed", extra={"domain": config.name})
                raise

        try:
            self._call(f"start domain {config.name}", create)
        except DriverError:
            # A concurrent call for the same instance may have won the race: that is success.
            winner = self.lookup(config.uuid)
            if winner is not None:
                return winner
            if self._name_taken(config.name):
                raise DomainExists(f"domain name {config.name} is taken by a domain with another UUID") from None
            raise
        return Guest(self, instance_id=config.uuid, name=config.name)

    def _name_taken(self, name: str) -> bool:
        def lookup(connection: libvirt.virConnect) -> bool:
            try:
                connection.lookupByName(name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            return True

        return self._call(f"look up domain name {name}", lookup)

    def lookup(self, instance_id: str) -> Guest | None:
        def find(connection: libvirt.virConnect) -> Guest | None:
            try:
                domain = self._find_domain(connection, instance_id)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return Guest(self, instance_id=instance_id, name=domain.name())

        return self._call(f"look up instance {instance_id}", find)

    def get_guest(self, instance_id: str) -> Guest:
        guest = self.lookup(instance_id)
        if guest is None:
            raise DomainNotFound(f"no domain for instance {instance_id}")
        return guest

    def list_guests(self, *, blank: bool = False) -> list[Guest]:
        """Our instances' domains, each under its instance id (a claimed pooled VM under the
        instance it was claimed for). ``blank``: the unclaimed pooled VMs instead."""

        def list_ours(connection: libvirt.virConnect) -> list[Guest]:
            guests = []
            for domain in connection.listAllDomains(0):
                values = _our_metadata(domain)
                if values is None or (values.get(POOL_METADATA_KEY) == POOL_BLANK) != blank:
                    continue
                guests.append(Guest(self, instance_id=_instance_id_of(domain, values), name=domain.name()))
            return sorted(guests, key=lambda guest: guest.name)

        return self._call("list domains", list_ours)

    def guest_stats(self) -> dict[str, GuestStats]:
        """Figures of every running domain of ours, by instance id (one bulk stats call)."""

        def read(connection: libvirt.virConnect) -> dict[str, GuestStats]:
            records = connection.getAllDomainStats(_STATS_GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            found = {}
            for domain, record in records:
                values = _our_metadata(domain)
                if values is None or values.get(POOL_METADATA_KEY) == POOL_BLANK:
                    continue
                stats = _stats_from(domain, record)
                if stats is not None:
                    found[_instance_id_of(domain, values)] = stats
            return found

        return self._call("read domain stats", read)

    def capabilities(self) -> HostCapabilities:
        def read(connection: libvirt.virConnect) -> HostCapabilities:
            info = connection.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, ...]
            capabilities = ET.fromstring(connection.getCapabilities())
            virt_types = sorted({domain.get("type", "") for domain in capabilities.iterfind("guest/arch/domain")})
            return HostCapabilities(cpus=info[2], memory_mib=info[1], virt_types=tuple(virt_types))

        return self._call("read host capabilities", read)

    def register_lifecycle_callback(self, callback: LifecycleCallback) -> None:
        """Call ``callback(instance_id, event)`` for lifecycle events of our domains.

        Called on libvirt's event thread; keep it short (e.g. put the event on a queue).
        """
        self._lifecycle_callbacks.append(callback)
        self._connect()

    def _on_lifecycle_event(self, _conn: Any, domain: Any, event: int, _detail: int, _opaque: Any):
        if not domain.name().startswith(DEFAULT_NAME_PREFIX):
            return
        name = _LIFECYCLE_EVENT_NAMES.get(event, str(event))
        instance_id = domain.UUIDString()
        for callback in list(self._lifecycle_callbacks):
            try:
                callback(instance_id, name)
            except Exception:  # a broken subscriber must not kill libvirt's event thread
                logger.exception("driver.lifecycle_callback_failed")

    # --- tenant networks (vmworker.network) ----------------------------------------------

    def network_ensure(self, network: TenantNetwork) -> None:
        """Define and start the tenant network unless it is there and active already.

        Idempotent and safe against a concurrent call (another worker on the same libvirtd):
        "exists" and "already active" refusals are looked up again, not raised."""
        xml = NetworkConfig.for_network(network).to_xml()

        def ensure(connection: libvirt.virConnect) -> None:
            try:
                found = connection.networkLookupByName(network.libvirt_name)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                try:
                    found = connection.networkDefineXML(xml)
                except libvirt.libvirtError:
                    found = connection.networkLookupByName(network.libvirt_name)  # a concurrent define won
            NetworkConfig.parse_str(found.XMLDesc(0))  # refuses a same-named network that is not isolated
            if not found.isActive():
                try:
                    found.create()
                except libvirt.libvirtError:
                    if not found.isActive():
                        raise
            found.setAutostart(1)

        try:
            self._call(f"ensure network {network.libvirt_name}", ensure)
        except ValueError as error:
            raise DriverError(f"ensure network {network.libvirt_name}: {error}") from error

    def network_remove(self, network: TenantNetwork, *, only_if_unused: bool = True) -> bool:
        """Stop and undefine the tenant network; with ``only_if_unused`` (the default) only when no
        domain on this host has a NIC on it. True when it is gone (or never existed)."""

        def remove(connection: libvirt.virConnect) -> bool:
            try:
                found = connection.networkLookupByName(network.libvirt_name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return True
                raise
            if only_if_unused and network.libvirt_name in _networks_in_use(connection):
                return False
            try:
                if found.isActive():
                    found.destroy()
                found.undefine()
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
            return True

        return self._call(f"remove network {network.libvirt_name}", remove)

    def list_networks(self) -> list[str]:
        """libvirt names of the tenant networks defined on this host (never anyone else's)."""

        def list_ours(connection: libvirt.virConnect) -> list[str]:
            return sorted(n.name() for n in connection.listAllNetworks(0) if n.name().startswith(NETWORK_NAME_PREFIX))

        return self._call("list networks", list_ours)

    # --- storage pools and volumes (vmworker.storage) ----------------------------------------

    def pool_ensure(self, pool: StoragePool) -> None:
        """Define, start and autostart the host's pool unless it is there and active already; a
        same-named pool of another type or path is refused. Safe against a concurrent call."""
        xml = pool.to_xml()

        def ensure(connection: libvirt.virConnect) -> None:
            try:
                found = connection.storagePoolLookupByName(pool.name)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                try:
                    found = connection.storagePoolDefineXML(xml, 0)
                except libvirt.libvirtError:
                    found = connection.storagePoolLookupByName(pool.name)  # a concurrent define won
            if StoragePool.parse_str(found.XMLDesc(0)) != pool:
                raise ValueError(f"pool {pool.name} exists with another path")
            if not found.isActive():
                try:
                    found.create(0)
                except libvirt.libvirtError:
                    if not found.isActive():
                        raise
            found.setAutostart(1)

        try:
            self._call(f"ensure storage pool {pool.name}", ensure)
        except ValueError as error:
            raise DriverError(f"ensure storage pool {pool.name}: {error}") from error

    def volume_create(self, pool_name: str, volume: StorageVolume) -> tuple[str, bool]:
        """(path, created): the volume made through the pool API as a fresh file, or the one that
        is there already (a relaunch, a re-delivered boot) with created False."""
        xml = volume.to_xml()

        def create(connection: libvirt.virConnect) -> tuple[str, bool]:
            pool = connection.storagePoolLookupByName(pool_name)
            try:
                return pool.storageVolLookupByName(volume.name).path(), False
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            try:
                return pool.createXML(xml, 0).path(), True
            except libvirt.libvirtError:
                pool.refresh(0)
                return pool.storageVolLookupByName(volume.name).path(), False  # a concurrent create won

        return self._call(f"create volume {volume.name} in pool {pool_name}", create)

    def volume_delete(self, pool_name: str, volume_name: str) -> bool:
        """Delete the volume through the pool API. True when it is gone (or never existed)."""

        def delete(connection: libvirt.virConnect) -> bool:
            try:
                pool = connection.storagePoolLookupByName(pool_name)
                found = pool.storageVolLookupByName(volume_name)
            except libvirt.libvirtError as error:
                if error.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL):
                    return True
                raise
            found.delete(0)
            return True

        return self._call(f"delete volume {volume_name} in pool {pool_name}", delete)

    def volume_allocation(self, pool_name: str, volume_name: str) -> int | None:
        """Bytes the volume's blocks take on the host (its "used"), None when it does not exist."""

        def read(connection: libvirt.virConnect) -> int | None:
            try:
                found = connection.storagePoolLookupByName(pool_name).storageVolLookupByName(volume_name)
            except libvirt.libvirtError as error:
                if error.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL):
                    return None
                raise
            return int(found.info()[2])

        return self._call(f"read volume {volume_name} in pool {pool_name}", read)

    def list_volumes(self, pool_name: str) -> list[str]:
        """Names of the pool's volumes (after a refresh: what is really in it), [] without the pool."""

        def list_all(connection: libvirt.virConnect) -> list[str]:
            try:
                pool = connection.storagePoolLookupByName(pool_name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return []
                raise
            pool.refresh(0)
            return sorted(pool.listVolumes())

        return self._call(f"list volumes of pool {pool_name}", list_all)

    # --- used by Guest: the raw virDomain never leaves this module and guest.py -------------

    def _domain_call(
        self,
        instance_id: str,
        action: str,
        operation: Callable[[Any], T],
        *,
        inactive_is_done: bool = False,
    ) -> T | None:
        """Run ``operation(virDomain)``; with ``inactive_is_done`` a "domain is not running"
        refusal counts as success (destroying a stopped domain is a no-op, not an error)."""

        def run(connection: libvirt.virConnect) -> T | None:
            domain = self._find_domain(connection, instance_id)
            try:
                return operation(domain)
            except libvirt.libvirtError as error:
                if inactive_is_done and error.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return None
                raise

        return self._call(f"{action} instance {instance_id}", run)

    def _find_domain(self, connection: libvirt.virConnect, instance_id: str) -> Any:
        """The domain of ``instance_id``: the one with that UUID, else a pooled VM claimed for
        it (its metadata names the instance; remembered per instance id). Raises libvirt's
        NO_DOMAIN error when there is none."""
        try:
            return connection.lookupByUUIDString(instance_id)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            missing = error
        domain_uuid = self._claimed.get(instance_id)
        if domain_uuid is not None:
            try:
                return connection.lookupByUUIDString(domain_uuid)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                self._claimed.pop(instance_id, None)
                raise
        for domain in connection.listAllDomains(0):
            values = _our_metadata(domain)
            if values is not None and values.get(POOL_METADATA_KEY) == POOL_CLAIMED:
                if values.get(METADATA_INSTANCE_KEY) == instance_id:
                    self._claimed[instance_id] = domain.UUIDString()
                    return domain
        raise missing

    # --- pooled (blank) VMs: vmworker.warm_pool -----------------------------------------

    def suspend(self, instance_id: str) -> None:
        self._domain_call(instance_id, "suspend", lambda d: d.suspend())

    def resume(self, instance_id: str) -> None:
        self._domain_call(instance_id, "resume", lambda d: d.resume())

    def attach_device(self, instance_id: str, device_xml: str) -> None:
        """Hotplug into the running (or paused) domain, live only (it is transient)."""
        self._domain_call(
            instance_id,
            "attach a device to",
            lambda d: d.attachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE),
        )

    def monitor_command(self, instance_id: str, command: str) -> str:
        """An HMP command on the domain's QEMU monitor (libvirt-qemu); libvirt marks the
        domain tainted ("custom-monitor"), which changes nothing else."""
        import libvirt_qemu

        return self._domain_call(
            instance_id,
            "run a monitor command on",
            lambda d: libvirt_qemu.qemuMonitorCommand(d, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP),
        )

    def set_cpu_quota(self, instance_id: str, cpu_quota_pct: int) -> None:
        """The live equivalent of the designer's ``<cputune>`` (see cputune_for)."""
        tune = cputune_for(cpu_quota_pct)
        self._domain_call(
            instance_id,
            "set the CPU quota of",
            lambda d: d.setSchedulerParametersFlags(
                {"vcpu_period": tune.period_us, "vcpu_quota": tune.quota_us}, libvirt.VIR_DOMAIN_AFFECT_LIVE
            ),
        )

    def claim_metadata(self, pool_id: str, values: dict[str, str]) -> None:
        """Rewrite a pooled VM's metadata (live) to name the instance it now is: from then on
        ``lookup(values["instance"])`` finds it and list_guests shows it under that id."""
        # Unqualified: libvirt puts the element in HYPERVM_NAMESPACE under the given prefix.
        root = ET.Element("hypervm")
        for key, value in sorted({**values, POOL_METADATA_KEY: POOL_CLAIMED}.items()):
            ET.SubElement(root, key).text = value
        xml = ET.tostring(root, encoding="unicode")

        def write(domain: Any) -> None:
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "hvm", HYPERVM_NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE
            )

        self._domain_call(pool_id, "claim", write)
        self._claimed[values[METADATA_INSTANCE_KEY]] = pool_id

    def _guest_stats_of(self, instance_id: str) -> GuestStats | None:
        def read(domain: Any) -> GuestStats | None:
            if not domain.isActive():
                return None
            [(_, record)] = domain.connect().domainListGetStats([domain], _STATS_GROUPS, 0)
            return _stats_from(domain, record)

        try:
            return self._domain_call(instance_id, "read stats of", read, inactive_is_done=True)
        except DomainNotFound:
            return None

    def _domain_state(self, instance_id: str) -> GuestState:
        try:
            state = self._domain_call(instance_id, "read state of", lambda d: d.state()[0])
        except DomainNotFound:
            return GuestState.ABSENT
        return _GUEST_STATES.get(state, GuestState.SHUTOFF)


def _our_metadata(domain: Any) -> dict[str, str] | None:
    """Our metadata's values, or None for a domain that is not ours (or went away meanwhile)."""
    try:
        xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, HYPERVM_NAMESPACE, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
            return None
        raise
    return InstanceMetadataConfig.parse_str(xml).values


def _instance_id_of(domain: Any, values: dict[str, str]) -> str:
    """A claimed pooled VM is its instance; any other domain is the instance of its UUID."""
    if values.get(POOL_METADATA_KEY) == POOL_CLAIMED and values.get(METADATA_INSTANCE_KEY):
        return values[METADATA_INSTANCE_KEY]
    return domain.UUIDString()


def _is_ours(domain: Any) -> bool:
    """Whether the domain carries our metadata element (False too when it went away meanwhile)."""
    try:
        domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, HYPERVM_NAMESPACE, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
            return False
        raise
    return True


def _stats_from(domain: Any, record: dict) -> GuestStats | None:
    """GuestStats from a bulk stats record; what a driver leaves out of it (libvirt's test driver
    gives no cpu or balloon group) is read from virDomainGetInfo. None when it stopped meanwhile."""
    if "cpu.time" not in record or "balloon.current" not in record or "vcpu.current" not in record:
        try:
            _state, _max_kib, memory_kib, vcpus, cpu_time_ns = domain.info()
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        record = {"cpu.time": cpu_time_ns, "balloon.current": memory_kib, "vcpu.current": vcpus} | record
    rss_kib = record.get("balloon.rss")
    return GuestStats(
        cpu_time_ns=int(record["cpu.time"]),
        vcpus=int(record["vcpu.current"]),
        memory_bytes=int(record["balloon.current"]) * 1024,
        rss_bytes=int(rss_kib) * 1024 if rss_kib is not None else None,
    )


def _networks_in_use(connection: libvirt.virConnect) -> set[str]:
    """Names of the networks any domain of this libvirtd (running or defined) has a NIC on."""
    names = set()
    for domain in connection.listAllDomains(0):
        try:
            xml = domain.XMLDesc(0)
        except libvirt.libvirtError:
            continue  # went away while we listed
        for source in ET.fromstring(xml).iterfind("devices/interface[@type='network']/source"):
            names.add(source.get("network", ""))
    return names


_GUEST_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: GuestState.RUNNING,  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: GuestState.SHUTOFF,
}


__all__ = ["Host", "HostCapabilities"]
