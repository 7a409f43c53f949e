"""Host: owns one libvirt connection and is the ONE place that catches ``libvirt.libvirtError``.

Contract:
- the connection opens lazily, keeps itself alive (libvirt keepalive on a default event loop
  thread) and is reopened once when an operation fails because it dropped;
- every libvirt failure leaves as ``DomainNotFound``, ``DomainExists``, ``ConnectionFailed`` or
  ``DriverError`` with a message naming the operation and the domain;
- ``define_and_start`` is idempotent per instance: the instance UUID is the domain UUID and the
  domain name derives from it, so a second call returns the domain the first one made;
- ``list_guests`` returns only domains carrying our metadata element (``HYPERVM_NAMESPACE``);
  whatever else runs on the host is not ours and is never listed.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from vmworker.driver.config import HYPERVM_NAMESPACE, DomainConfig
from vmworker.driver.designer import DesignPolicy, design_domain
from vmworker.driver.errors import ConnectionFailed, DomainExists, DomainNotFound, DriverError
from vmworker.driver.guest import Guest, GuestState
from vmworker.driver.spec import DEFAULT_NAME_PREFIX, DomainSpec
from vmworker.network.tenant import NETWORK_NAME_PREFIX, NetworkConfig, TenantNetwork

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
                domain = connection.lookupByUUIDString(instance_id)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return Guest(self, instance_id=domain.UUIDString(), name=domain.name())

        return self._call(f"look up instance {instance_id}", find)

    def get_guest(self, instance_id: str) -> Guest:
        guest = self.lookup(instance_id)
        if guest is None:
            raise DomainNotFound(f"no domain for instance {instance_id}")
        return guest

    def list_guests(self) -> list[Guest]:
        def list_ours(connection: libvirt.virConnect) -> list[Guest]:
            guests = []
            for domain in connection.listAllDomains(0):
                try:
                    domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, HYPERVM_NAMESPACE, 0)
                except libvirt.libvirtError as error:
                    if error.get_error_code() in (
                        libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                        libvirt.VIR_ERR_NO_DOMAIN,  # went away while we listed
                    ):
                        continue
                    raise
                guests.append(Guest(self, instance_id=domain.UUIDString(), name=domain.name()))
            return sorted(guests, key=lambda guest: guest.name)

        return self._call("list domains", list_ours)

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
            domain = connection.lookupByUUIDString(instance_id)
            try:
                return operation(domain)
            except libvirt.libvirtError as error:
                if inactive_is_done and error.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return None
                raise

        return self._call(f"{action} instance {instance_id}", run)

    def _domain_state(self, instance_id: str) -> GuestState:
        try:
            state = self._domain_call(instance_id, "read state of", lambda d: d.state()[0])
        except DomainNotFound:
            return GuestState.ABSENT
        return _GUEST_STATES.get(state, GuestState.SHUTOFF)


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
