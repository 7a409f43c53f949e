"""The normalised app definition: a frozen dataclass tree, and its two serialised forms.

Contract:
* An ``AppDefinition`` is only ever built by the parser (``parse_app_definition``), so every value in
  it is valid and every Marathon default is filled in: the pipeline never sees a missing field.
* ``to_marathon_json()`` is the canonical app JSON Marathon returns (the definition part, without
  counts, tasks or version): camelCase keys, only keys marathon-python 0.13.0 can parse, port
  mappings in the 1.5+ place (``container.portMappings``), and it parses back to an equal
  definition: ``parse_app_definition(d.to_marathon_json()) == d``.
* ``to_stored()`` / ``AppDefinition.from_stored()`` are the database form (a JSON object with a
  format number). Loading a stored definition does not re-validate it, so tightening a rule later
  never makes an already stored version unreadable.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from vmworker.image_reference import ImageReference, parse_image_reference

STORED_FORMAT_VERSION = 1

EMPTY_MAPPING: Mapping[str, str] = types.MappingProxyType({})  # shared: it is read-only


def frozen_mapping(values: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(values))


class NetworkMode(enum.StrEnum):
    HOST = "host"
    CONTAINER_BRIDGE = "container/bridge"
    CONTAINER = "container"


class HealthCheckProbe(enum.StrEnum):
    """What a health check does, whatever Marathon protocol spelling asked for it."""

    HTTP = "http"
    HTTPS = "https"
    TCP = "tcp"
    COMMAND = "command"


HEALTH_CHECK_PROBE_BY_PROTOCOL = {
    "HTTP": HealthCheckProbe.HTTP,
    "MESOS_HTTP": HealthCheckProbe.HTTP,
    "HTTPS": HealthCheckProbe.HTTPS,
    "MESOS_HTTPS": HealthCheckProbe.HTTPS,
    "TCP": HealthCheckProbe.TCP,
    "MESOS_TCP": HealthCheckProbe.TCP,
    "COMMAND": HealthCheckProbe.COMMAND,
    "MESOS_COMMAND": HealthCheckProbe.COMMAND,
}


@dataclass(frozen=True)
class PortDefinition:
    """A port under host networking; ``port`` 0 means "assign a service port"."""

    port: int = 0
    protocol: str = "tcp"
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)


@dataclass(frozen=True)
class PortMapping:
    """A container port, published on the host when ``host_port`` is not None (0: allocate one)."""

    container_port: int = 0
    host_port: int | None = None
    service_port: int = 0
    protocol: str = "tcp"
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)


@dataclass(frozen=True)
class Volume:
    """A persistent volume (``persistent_size_mib`` set, ``container_path`` one relative segment),
    or a bind of such a volume to an absolute path in the guest (``host_path`` names the volume)."""

    container_path: str
    mode: str = "RW"
    persistent_size_mib: int | None = None
    host_path: str | None = None

    @property
    def is_persistent(self) -> bool:
        return self.persistent_size_mib is not None


@dataclass(frozen=True)
class DockerImage:
    image: str
    force_pull_image: bool = False

    @property
    def image_reference(self) -> ImageReference:
        return parse_image_reference(self.image)


@dataclass(frozen=True)
class Container:
    type: str = "DOCKER"
    docker: DockerImage | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()


@dataclass(frozen=True)
class Network:
    mode: NetworkMode = NetworkMode.HOST
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)


@dataclass(frozen=True)
class HealthCheck:
    """One health check; exactly one of ``port_index`` and ``port`` is set unless it is a COMMAND."""

    protocol: str = "HTTP"
    path: str | None = None
    port_index: int | None = None
    port: int | None = None
    command: str | None = None
    grace_period_s: int = 300
    interval_s: int = 60
    timeout_s: int = 20
    max_consecutive_failures: int = 3
    delay_s: int = 15
    ignore_http1xx: bool = False

    @property
    def probe(self) -> HealthCheckProbe:
        return HEALTH_CHECK_PROBE_BY_PROTOCOL[self.protocol]


@dataclass(frozen=True)
class UpgradeStrategy:
    minimum_health_capacity: float = 1.0
    maximum_over_capacity: float = 1.0


@dataclass(frozen=True)
class UnreachableStrategy:
    inactive_after_s: int = 0
    expunge_after_s: int = 0


@dataclass(frozen=True)
class Constraint:
    field: str
    operator: str
    value: str | None = None


@dataclass(frozen=True)
class AppDefinition:
    id: str
    cmd: str | None = None
    args: tuple[str, ...] = ()
    user: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    instances: int = 1
    cpus: float = 1.0
    memory_mib: float = 128.0
    disk_mib: float = 0.0
    container: Container | None = None
    # Empty when the definition gave none: Marathon's default port model (see network_mode).
    networks: tuple[Network, ...] = ()
    port_definitions: tuple[PortDefinition, ...] = (PortDefinition(name="default"),)
    require_ports: bool = False
    health_checks: tuple[HealthCheck, ...] = ()
    upgrade_strategy: UpgradeStrategy = field(default_factory=UpgradeStrategy)
    # None means Marathon's "disabled": an unreachable instance is never replaced elsewhere.
    unreachable_strategy: UnreachableStrategy | None = field(default_factory=UnreachableStrategy)
    kill_selection: str = "YOUNGEST_FIRST"
    backoff_s: int = 1
    backoff_factor: float = 1.15
    max_launch_delay_s: int = 300
    task_kill_grace_period_s: int | None = None
    constraints: tuple[Constraint, ...] = ()
    dependencies: tuple[str, ...] = ()
    accepted_resource_roles: tuple[str, ...] = ()
    role: str | None = None

    @property
    def network_mode(self) -> NetworkMode:
        """``HOST`` when no network was given: the ports are ``portDefinitions`` (the app binds
        ``$PORTi``), as Marathon's default; the VM still joins its tenant's default network."""
        return self.networks[0].mode if self.networks else NetworkMode.HOST

    @property
    def is_resident(self) -> bool:
        """Resident apps own persistent volumes: each instance stays with its volume's host."""
        return self.container is not None and any(volume.is_persistent for volume in self.container.volumes)

    @property
    def port_names(self) -> tuple[str | None, ...]:
        """Names of the app's ports in ``portIndex`` order (mappings or definitions, by network mode)."""
        if self.network_mode is NetworkMode.HOST:
            return tuple(definition.name for definition in self.port_definitions)
        return tuple(mapping.name for mapping in self.container.port_mappings) if self.container else ()

    def to_marathon_json(self) -> dict[str, object]:
        app: dict[str, object] = {"id": self.id}
        if self.cmd is not None:
            app["cmd"] = self.cmd
        if self.args:
            app["args"] = list(self.args)
        if self.user is not None:
            app["user"] = self.user
        app.update(
            env=dict(self.env),
            labels=dict(self.labels),
            instances=self.instances,
            cpus=_json_number(self.cpus),
            mem=_json_number(self.memory_mib),
            disk=_json_number(self.disk_mib),
            gpus=0,
            executor="",
            constraints=[_constraint_json(constraint) for constraint in self.constraints],
        )
        if self.container is not None:
            app["container"] = _container_json(self.container)
        app.update(
            # Versions stored before host mode was refused say {"mode": "host"}: render them as
            # none given, so a client that sends the app back does not get a 422 for it.
            networks=[_network_json(network) for network in self.networks if network.mode is not NetworkMode.HOST],
            portDefinitions=[_port_definition_json(definition) for definition in self.port_definitions],
            requirePorts=self.require_ports,
            healthChecks=[_health_check_json(check) for check in self.health_checks],
            upgradeStrategy={
                "minimumHealthCapacity": _json_number(self.upgrade_strategy.minimum_health_capacity),
                "maximumOverCapacity": _json_number(self.upgrade_strategy.maximum_over_capacity),
            },
            unreachableStrategy=(
                "disabled"
                if self.unreachable_strategy is None
                else {
                    "inactiveAfterSeconds": self.unreachable_strategy.inactive_after_s,
                    "expungeAfterSeconds": self.unreachable_strategy.expunge_after_s,
                }
            ),
            killSelection=self.kill_selection,
            backoffSeconds=self.backoff_s,
            backoffFactor=_json_number(self.backoff_factor),
            maxLaunchDelaySeconds=self.max_launch_delay_s,
        )
        if self.task_kill_grace_period_s is not None:
            app["taskKillGracePeriodSeconds"] = self.task_kill_grace_period_s
        app["dependencies"] = list(self.dependencies)
        if self.accepted_resource_roles:
            app["acceptedResourceRoles"] = list(self.accepted_resource_roles)
        if self.role is not None:
            app["role"] = self.role
        app["fetch"] = []
        return app

    def to_stored(self) -> dict[str, object]:
        return {"format": STORED_FORMAT_VERSION, "app": _to_plain(self)}

    @classmethod
    def from_stored(cls, stored: Mapping[str, object]) -> AppDefinition:
        if stored.get("format") != STORED_FORMAT_VERSION:
            raise ValueError(f"stored app definition has format {stored.get('format')!r}, expected 1")
        return _from_plain(cls, stored["app"])


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _labels_into(target: dict[str, object], labels: Mapping[str, str]) -> dict[str, object]:
    if labels:
        target["labels"] = dict(labels)
    return target


def _constraint_json(constraint: Constraint) -> list[str]:
    parts = [constraint.field, constraint.operator]
    return parts if constraint.value is None else [*parts, constraint.value]


def _container_json(container: Container) -> dict[str, object]:
    container_json: dict[str, object] = {"type": container.type}
    if container.docker is not None:
        container_json["docker"] = {
            "image": container.docker.image,
            "forcePullImage": container.docker.force_pull_image,
            "privileged": False,
            "parameters": [],
        }
    container_json["portMappings"] = [_port_mapping_json(mapping) for mapping in container.port_mappings]
    container_json["volumes"] = [_volume_json(volume) for volume in container.volumes]
    return container_json


def _port_mapping_json(mapping: PortMapping) -> dict[str, object]:
    mapping_json: dict[str, object] = {"containerPort": mapping.container_port}
    if mapping.host_port is not None:
        mapping_json["hostPort"] = mapping.host_port
    mapping_json.update(servicePort=mapping.service_port, protocol=mapping.protocol)
    if mapping.name is not None:
        mapping_json["name"] = mapping.name
    return _labels_into(mapping_json, mapping.labels)


def _volume_json(volume: Volume) -> dict[str, object]:
    volume_json: dict[str, object] = {"containerPath": volume.container_path, "mode": volume.mode}
    if volume.persistent_size_mib is not None:
        volume_json["persistent"] = {"size": volume.persistent_size_mib}
    if volume.host_path is not None:
        volume_json["hostPath"] = volume.host_path
    return volume_json


def _network_json(network: Network) -> dict[str, object]:
    network_json: dict[str, object] = {"mode": str(network.mode)}
    if network.name is not None:
        network_json["name"] = network.name
    return _labels_into(network_json, network.labels)


def _port_definition_json(definition: PortDefinition) -> dict[str, object]:
    definition_json: dict[str, object] = {"port": definition.port, "protocol": definition.protocol}
    if definition.name is not None:
        definition_json["name"] = definition.name
    return _labels_into(definition_json, definition.labels)


def _health_check_json(check: HealthCheck) -> dict[str, object]:
    check_json: dict[str, object] = {"protocol": check.protocol}
    if check.path is not None:
        check_json["path"] = check.path
    if check.port_index is not None:
        check_json["portIndex"] = check.port_index
    if check.port is not None:
        check_json["port"] = check.port
    if check.command is not None:
        check_json["command"] = {"value": check.command}
    check_json.update(
        gracePeriodSeconds=check.grace_period_s,
        intervalSeconds=check.interval_s,
        timeoutSeconds=check.timeout_s,
        maxConsecutiveFailures=check.max_consecutive_failures,
        delaySeconds=check.delay_s,
    )
    if check.probe in (HealthCheckProbe.HTTP, HealthCheckProbe.HTTPS):
        check_json["ignoreHttp1xx"] = check.ignore_http1xx
    return check_json


def _to_plain(value: object) -> object:
    """Dataclass tree -> JSON-ready values (snake_case keys, lists for tuples)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


@functools.cache
def _type_hints(cls: type) -> dict:
    """A dataclass's resolved type hints: get_type_hints evaluates them anew at every call (700 µs
    per stored definition read, the top cost of /v2/apps); the classes never change."""
    return typing.get_type_hints(cls)


def _from_plain(annotation: object, value: object) -> object:
    """The inverse of ``_to_plain``, driven by the dataclasses' type hints."""
    if dataclasses.is_dataclass(annotation):
        hints = _type_hints(annotation)
        assert isinstance(value, Mapping)
        return annotation(**{name: _from_plain(hints[name], item) for name, item in value.items()})
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is types.UnionType or origin is typing.Union:
        if value is None:
            return None
        (non_none_annotation,) = (argument for argument in arguments if argument is not type(None))
        return _from_plain(non_none_annotation, value)
    if origin is tuple:
        assert isinstance(value, list)
        return tuple(_from_plain(arguments[0], item) for item in value)
    if origin is Mapping:
        assert isinstance(value, Mapping)
        return frozen_mapping(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation(value)
    if annotation is float and isinstance(value, int):
        return float(value)
    return value
