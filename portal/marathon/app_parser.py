"""Parse a Marathon app definition (decoded JSON) into a normalised ``AppDefinition``.

Contract:
* ``parse_app_definition(data, base_group="/")`` validates a whole definition (POST, or PUT with
  ``partialUpdate=false``) and returns a normalised ``AppDefinition``, or raises
  ``MarathonValidationError`` listing every bad field at once, with Marathon's paths
  (``/container/portMappings(0)/hostPort``; ``/`` for whole-object rules). A relative ``id`` is
  resolved against ``base_group``; relative ``dependencies`` against the app's own group.
* ``parse_app_definition(data, partial=True)`` validates only the fields present (a PUT or PATCH
  body) and returns an ``AppDefinitionPatch``; the body's ``id`` is ignored, because the URL wins.
* ``merge_app_definition(existing, patch)`` applies a PUT/PATCH body: its top-level fields replace
  the stored ones wholesale, omitted fields keep their values, and values that were only derived
  defaults (default port, upgradeStrategy, ...) are derived again from the merged definition.
  Read-only fields sent back by clients are ignored. A body of only ``{"version": v}`` is a
  rollback: the API layer must recognise it before merging (here it would change nothing).
* What is supported, ignored or rejected by name is declared in ``field_policy``. Deliberate
  differences from Marathon, for a multi-tenant VM platform: host paths, secrets, fetchers, GPUs,
  privileged containers and attribute constraints are rejected; ``cpus`` must be at least 0.001,
  health check intervals and timeouts at least 1 s; an app joins at most one network.
* Platform policy (``PlatformPolicy``, passed in by the caller; its defaults are the platform's):
  a fixed host port (non-zero ``hostPort``; a ``portDefinitions`` port with ``requirePorts``) only
  from the platform's range and never a reserved one; an HTTP/TCP check's ``port`` only one of
  those fixed ports (probes go to the host's address, so any other port would be the host's);
  every tenant-chosen time and size at most its cap, named "(platform limit)" in the 422.
* Networks: a VM has no host network namespace to share, so mode ``host`` (and the legacy
  ``docker.network: HOST``) is refused by path. Without ``networks`` the definition keeps
  Marathon's default port model (``portDefinitions``, ``$PORTi``) and ``networks`` stays empty
  (``network_mode`` is then ``HOST``, which means only that); every instance joins a tenant
  network either way (``container`` + ``name``: that one; otherwise the tenant's default).
The module is pure: no Django, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from portal.marathon import field_policy
from portal.marathon.app_definition import (
    AppDefinition,
    Constraint,
    Container,
    DockerImage,
    HealthCheck,
    HealthCheckProbe,
    Network,
    NetworkMode,
    PortDefinition,
    PortMapping,
    UnreachableStrategy,
    UpgradeStrategy,
    Volume,
    frozen_mapping,
)
from portal.marathon.errors import ROOT_PATH, ValidationErrorCollector, json_path_join
from portal.marathon.field_policy import UnsupportedField
from portal.marathon.path_ids import ROOT_GROUP, InvalidPathId, canonical_group_id, canonical_path_id
from portal.marathon.platform_policy import PlatformPolicy
from vmworker.image_reference import InvalidImageReference, parse_image_reference

MINIMUM_CPUS = 0.001
MAXIMUM_PORT = 65535
PORT_PROTOCOLS = ("tcp", "udp", "udp,tcp")
CONTAINER_TYPES = ("DOCKER", "MESOS")
VOLUME_MODES = ("RO", "RW")
KILL_SELECTIONS = ("YOUNGEST_FIRST", "OLDEST_FIRST")
HEALTH_CHECK_PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "TCP",
    "COMMAND",
    "MESOS_HTTP",
    "MESOS_HTTPS",
    "MESOS_TCP",
    "MESOS_COMMAND",
)
CONSTRAINT_OPERATORS = ("UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS")
SUPPORTED_CONSTRAINT_OPERATORS = ("UNIQUE", "CLUSTER", "MAX_PER")
SUPPORTED_CONSTRAINT_FIELDS = ("hostname", "@hostname")
NETWORK_MODE_BY_LEGACY_DOCKER_NETWORK = {
    "BRIDGE": NetworkMode.CONTAINER_BRIDGE,
    "USER": NetworkMode.CONTAINER,
    "HOST": NetworkMode.HOST,
}
PORT_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NETWORK_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
# The guest runs a check command from one control-port line (at most 4095 bytes of UTF-8).
MAX_CHECK_COMMAND_CHARS = 1000
RESIDENT_UPGRADE_STRATEGY = UpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0.0)
DEFAULT_PORT_DEFINITIONS = (PortDefinition(name="default"),)
DEFAULT_POLICY = PlatformPolicy()


HOST_MODE_REFUSAL = (
    "mode 'host' is not supported: each instance is a VM with its own network stack; "
    "use 'container/bridge' (or leave 'networks' out) with published ports, or 'container' with a name"
)


@dataclass(frozen=True)
class AppDefinitionPatch:
    """A validated PUT/PATCH body: the top-level fields it replaces, as given."""

    fields: Mapping[str, object]


def parse_app_definition(
    data: object, *, base_group: str = ROOT_GROUP, partial: bool = False, policy: PlatformPolicy = DEFAULT_POLICY
) -> AppDefinition | AppDefinitionPatch:
    parser = _AppDefinitionParser(base_group, policy)
    if partial:
        return parser.parse_patch(data)
    return parser.parse(data)


def merge_app_definition(
    existing: AppDefinition, patch: object, *, policy: PlatformPolicy = DEFAULT_POLICY
) -> AppDefinition:
    if not isinstance(patch, Mapping):
        parse_app_definition(patch, partial=True, policy=policy)  # raises: the body is not a JSON object
    assert isinstance(patch, Mapping)
    # Top-level fields replace wholesale, so every error path in the merged document is the
    # patch's own path: one full parse reports the patch's field errors and the cross-field ones.
    given_fields = {key: value for key, value in patch.items() if key != "id" and value is not None}
    merged = existing.to_marathon_json()
    _forget_derived_defaults(existing, merged, given_fields)
    merged.update(given_fields)
    merged["id"] = existing.id
    # The stored fields are checked again too: the policy may have tightened since they were stored.
    definition = parse_app_definition(merged, policy=policy)
    assert isinstance(definition, AppDefinition)
    return definition


def _forget_derived_defaults(
    existing: AppDefinition, merged: dict[str, object], patch_fields: Mapping[str, object]
) -> None:
    """Drop values that were only defaults derived from other fields, so the merge derives them again.

    Example: an app on host networking got the default port definition; a patch that moves it to
    ``container/bridge`` must not carry that port definition along (it would be invalid there).
    """
    if "portDefinitions" not in patch_fields and "ports" not in patch_fields:
        if existing.port_definitions == _default_port_definitions(existing.network_mode):
            merged.pop("portDefinitions", None)
    container_json = merged.get("container")
    if "container" not in patch_fields and isinstance(container_json, dict) and existing.container is not None:
        if existing.container.port_mappings == _default_port_mappings(existing.network_mode):
            container_json.pop("portMappings", None)
    if "upgradeStrategy" not in patch_fields and existing.upgrade_strategy == _default_upgrade_strategy(
        existing.is_resident
    ):
        merged.pop("upgradeStrategy", None)
    if "unreachableStrategy" not in patch_fields and existing.unreachable_strategy == _default_unreachable_strategy(
        existing.is_resident
    ):
        merged.pop("unreachableStrategy", None)


def _default_port_definitions(mode: NetworkMode) -> tuple[PortDefinition, ...]:
    return DEFAULT_PORT_DEFINITIONS if mode is NetworkMode.HOST else ()


def _default_port_mappings(mode: NetworkMode) -> tuple[PortMapping, ...]:
    if mode is NetworkMode.HOST:
        return ()
    return (PortMapping(name="default", host_port=0 if mode is NetworkMode.CONTAINER_BRIDGE else None),)


def _default_upgrade_strategy(is_resident: bool) -> UpgradeStrategy:
    return RESIDENT_UPGRADE_STRATEGY if is_resident else UpgradeStrategy()


def _default_unreachable_strategy(is_resident: bool) -> UnreachableStrategy | None:
    return None if is_resident else UnreachableStrategy()


def _cap_message(cap: float, unit: str = "") -> str:
    shown = int(cap) if float(cap).is_integer() else cap
    return f"must be at most {shown}{unit} (platform limit)"


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


@dataclass(frozen=True)
class _ParsedContainer:
    """A container before the app-level rules place its port mappings."""

    type: str
    docker: DockerImage | None
    legacy_docker_network: str | None
    port_mappings: tuple[PortMapping, ...] | None
    port_mappings_path: str
    volumes: tuple[Volume, ...]


class _AppDefinitionParser:
    def __init__(self, base_group: str, policy: PlatformPolicy):
        self.errors = ValidationErrorCollector()
        self.policy = policy
        try:
            self.base_group = canonical_group_id(base_group)
        except InvalidPathId as error:
            raise ValueError(f"base_group {base_group!r} is not a valid group id: {error}") from error

    # ---- entry points -------------------------------------------------------------------------

    def parse(self, data: object) -> AppDefinition:
        app = self._object(data, ROOT_PATH)
        if app is None:
            self.errors.raise_if_any()
        assert app is not None
        self._check_fields(
            app,
            ROOT_PATH,
            field_policy.APP_SUPPORTED_FIELDS,
            field_policy.APP_UNSUPPORTED_FIELDS,
            ignored=field_policy.APP_IGNORED_FIELDS,
        )
        app_id = self._app_id(app)
        definition = self._assemble(app, app_id)
        self.errors.raise_if_any()
        return definition

    def parse_patch(self, data: object) -> AppDefinitionPatch:
        patch = self._object(data, ROOT_PATH)
        if patch is None:
            self.errors.raise_if_any()
        assert patch is not None
        self._check_fields(
            patch,
            ROOT_PATH,
            field_policy.APP_SUPPORTED_FIELDS,
            field_policy.APP_UNSUPPORTED_FIELDS,
            ignored=field_policy.APP_IGNORED_FIELDS,
        )
        self._fields_on_their_own(patch, app_id=None)
        self.errors.raise_if_any()
        return AppDefinitionPatch(
            fields={
                key: value
                for key, value in patch.items()
                if key in field_policy.APP_SUPPORTED_FIELDS and key != "id" and value is not None
            }
        )

    # ---- the whole app ------------------------------------------------------------------------

    def _app_id(self, app: dict) -> str | None:
        raw_id = app.get("id")
        if raw_id is None:
            self.errors.add("/id", "is required")
            return None
        if not isinstance(raw_id, str):
            self.errors.add("/id", "must be a string")
            return None
        try:
            app_id = canonical_path_id(raw_id, self.base_group)
        except InvalidPathId as error:
            self.errors.add("/id", str(error))
            return None
        if len(app_id) > self.policy.max_app_id_chars:
            self.errors.add("/id", _cap_message(self.policy.max_app_id_chars, " characters"))
            return None
        return app_id

    def _fields_on_their_own(self, app: dict, app_id: str | None) -> dict[str, object]:
        """Every field's own rules; the rules between fields come in ``_assemble``."""
        upgrade_strategy = self._object(app.get("upgradeStrategy"), "/upgradeStrategy", optional=True)
        if upgrade_strategy is not None:
            self._check_fields(upgrade_strategy, "/upgradeStrategy", field_policy.UPGRADE_STRATEGY_SUPPORTED_FIELDS)
        policy = self.policy
        return {
            "cmd": self._string(app, "cmd", ROOT_PATH, cap=policy.max_cmd_chars),
            "args": self._string_list(
                app, "args", ROOT_PATH, max_items=policy.max_args, max_item_chars=policy.max_arg_chars
            ),
            "user": self._string(app, "user", ROOT_PATH, cap=policy.max_name_chars),
            "env": self._env(app.get("env")),
            "labels": self._string_map(app.get("labels"), "/labels"),
            "instances": self._integer(app, "instances", ROOT_PATH, default=1, minimum=0, cap=policy.max_instances),
            "cpus": self._number(app, "cpus", ROOT_PATH, default=1.0, minimum=MINIMUM_CPUS, cap=policy.max_cpus),
            "memory_mib": self._number(
                app, "mem", ROOT_PATH, default=128.0, minimum=0, cap=policy.max_memory_mib, unit=" MiB"
            ),
            "disk_mib": self._number(
                app, "disk", ROOT_PATH, default=0.0, minimum=0, cap=policy.max_disk_mib, unit=" MiB"
            ),
            "require_ports": self._boolean(app, "requirePorts", ROOT_PATH, default=False),
            "kill_selection": self._choice(app, "killSelection", ROOT_PATH, KILL_SELECTIONS, "YOUNGEST_FIRST"),
            "backoff_s": self._integer(
                app, "backoffSeconds", ROOT_PATH, default=1, minimum=0, cap=policy.max_backoff_s, unit=" s"
            ),
            "backoff_factor": self._number(
                app, "backoffFactor", ROOT_PATH, default=1.15, minimum=1.0, cap=policy.max_backoff_factor
            ),
            "max_launch_delay_s": self._integer(
                app,
                "maxLaunchDelaySeconds",
                ROOT_PATH,
                default=300,
                minimum=0,
                cap=policy.max_launch_delay_s,
                unit=" s",
            ),
            "task_kill_grace_period_s": self._integer(
                app,
                "taskKillGracePeriodSeconds",
                ROOT_PATH,
                minimum=0,
                cap=policy.max_task_kill_grace_period_s,
                unit=" s",
            ),
            "minimum_health_capacity": self._number(
                upgrade_strategy or {}, "minimumHealthCapacity", "/upgradeStrategy", minimum=0, maximum=1
            ),
            "maximum_over_capacity": self._number(
                upgrade_strategy or {}, "maximumOverCapacity", "/upgradeStrategy", minimum=0, maximum=1
            ),
            "unreachable_strategy": self._unreachable_strategy(app.get("unreachableStrategy")),
            "constraints": self._constraints(app.get("constraints")),
            "dependencies": self._dependencies(app.get("dependencies"), app_id),
            "accepted_resource_roles": self._string_list(
                app,
                "acceptedResourceRoles",
                ROOT_PATH,
                max_items=policy.max_labels,
                max_item_chars=policy.max_name_chars,
            ),
            "role": self._string(app, "role", ROOT_PATH, cap=policy.max_name_chars),
            "networks": self._networks(app.get("networks")),
            "port_definitions": self._port_definitions(app),
            "container": self._container(app.get("container")),
            "health_checks": self._health_checks(app.get("healthChecks")),
            "residency": self._object(app.get("residency"), "/residency", optional=True),
        }

    def _assemble(self, app: dict, app_id: str | None) -> AppDefinition:
        fields = self._fields_on_their_own(app, app_id)
        cmd, args, parsed_container = fields["cmd"], fields["args"], fields["container"]
        if cmd is not None and args:
            self.errors.add(ROOT_PATH, "'cmd' and 'args' cannot be used together")
        if cmd is None and not args and (parsed_container is None or parsed_container.docker is None):
            self.errors.add(ROOT_PATH, "an app needs 'cmd', 'args' or 'container.docker.image': it has nothing to run")

        networks = self._resolve_networks(fields["networks"], parsed_container)
        mode = networks[0].mode if networks else NetworkMode.HOST
        if mode is not NetworkMode.HOST and app.get("container") is None:
            self.errors.add("/networks", f"mode '{mode}' needs a 'container'")
        container = self._resolve_container(parsed_container, mode)

        port_definitions = fields["port_definitions"]
        if port_definitions is None:
            port_definitions = _default_port_definitions(mode)
        elif port_definitions and mode is not NetworkMode.HOST:
            self.errors.add(
                "/portDefinitions" if "portDefinitions" in app else "/ports",
                f"port definitions are for host networking; with mode '{mode}' use container.portMappings",
            )
        port_definitions_path = "/portDefinitions" if "portDefinitions" in app else "/ports"
        self._check_port_definitions_unique(port_definitions, port_definitions_path)

        # The ports an instance holds on its host whatever placement picks: they alone may be
        # fixed by the tenant, and they (or a portIndex) are what a health check may probe.
        if mode is NetworkMode.HOST:
            fixed_host_ports = tuple(d.port for d in port_definitions) if fields["require_ports"] else ()
            self._check_fixed_host_ports(
                fixed_host_ports, port_definitions_path, "port" if "portDefinitions" in app else None
            )
        else:
            fixed_host_ports = tuple(m.host_port for m in (container.port_mappings if container else ()))
            if parsed_container is not None:
                self._check_fixed_host_ports(fixed_host_ports, parsed_container.port_mappings_path, "hostPort")
        port_count = (
            len(port_definitions) if mode is NetworkMode.HOST else len(container.port_mappings if container else ())
        )
        health_checks = self._resolve_health_check_ports(
            fields["health_checks"], port_count, {port for port in fixed_host_ports if port}
        )

        is_resident = container is not None and any(volume.is_persistent for volume in container.volumes)
        upgrade_strategy = self._resolve_upgrade_strategy(fields, is_resident)
        unreachable_strategy = fields["unreachable_strategy"]
        if "unreachableStrategy" not in app or app["unreachableStrategy"] is None:
            unreachable_strategy = _default_unreachable_strategy(is_resident)
        elif is_resident and unreachable_strategy is not None:
            self.errors.add(
                "/unreachableStrategy",
                "must be 'disabled' for apps with persistent volumes: an instance stays with its volume",
            )

        if self.errors or app_id is None:
            return AppDefinition(id=app_id or "/invalid")
        return AppDefinition(
            id=app_id,
            cmd=cmd,
            args=args or (),
            user=fields["user"],
            env=fields["env"],
            labels=fields["labels"],
            instances=fields["instances"],
            cpus=float(fields["cpus"]),
            memory_mib=float(fields["memory_mib"]),
            disk_mib=float(fields["disk_mib"]),
            container=container,
            networks=networks,
            port_definitions=port_definitions,
            require_ports=fields["require_ports"],
            health_checks=health_checks,
            upgrade_strategy=upgrade_strategy,
            unreachable_strategy=unreachable_strategy,
            kill_selection=fields["kill_selection"],
            backoff_s=fields["backoff_s"],
            backoff_factor=float(fields["backoff_factor"]),
            max_launch_delay_s=fields["max_launch_delay_s"],
            task_kill_grace_period_s=fields["task_kill_grace_period_s"],
            constraints=fields["constraints"],
            dependencies=fields["dependencies"],
            accepted_resource_roles=fields["accepted_resource_roles"] or (),
            role=fields["role"],
        )

    # ---- rules between fields -----------------------------------------------------------------

    def _resolve_networks(
        self, networks: tuple[Network, ...] | None, container: _ParsedContainer | None
    ) -> tuple[Network, ...]:
        legacy_network = container.legacy_docker_network if container else None
        if legacy_network is None:
            return networks if networks is not None else ()
        if networks is not None:
            self.errors.add("/container/docker/network", "cannot be combined with 'networks'; use 'networks' only")
            return networks
        if legacy_network not in NETWORK_MODE_BY_LEGACY_DOCKER_NETWORK:
            self.errors.add("/container/docker/network", f"'{legacy_network}' is not supported; use BRIDGE or USER")
            return ()
        if NETWORK_MODE_BY_LEGACY_DOCKER_NETWORK[legacy_network] is NetworkMode.HOST:
            self.errors.add("/container/docker/network", HOST_MODE_REFUSAL)
            return ()
        return (Network(mode=NETWORK_MODE_BY_LEGACY_DOCKER_NETWORK[legacy_network]),)

    def _resolve_container(self, parsed: _ParsedContainer | None, mode: NetworkMode) -> Container | None:
        if parsed is None:
            return None
        port_mappings = parsed.port_mappings
        if port_mappings is None:
            port_mappings = _default_port_mappings(mode)
        elif port_mappings and mode is NetworkMode.HOST:
            self.errors.add(
                parsed.port_mappings_path,
                'port mappings need a container network: set networks to [{"mode": "container/bridge"}] '
                "or use portDefinitions",
            )
        if mode is NetworkMode.CONTAINER_BRIDGE:
            port_mappings = tuple(
                dataclasses.replace(mapping, host_port=0) if mapping.host_port is None else mapping
                for mapping in port_mappings
            )
        self._check_port_mappings_unique(port_mappings, parsed.port_mappings_path)
        self._check_volume_binds(parsed.volumes)
        return Container(type=parsed.type, docker=parsed.docker, port_mappings=port_mappings, volumes=parsed.volumes)

    def _check_port_mappings_unique(self, mappings: tuple[PortMapping, ...], path: str) -> None:
        seen_names: set[str] = set()
        seen_host_ports: set[int] = set()
        for index, mapping in enumerate(mappings):
            item_path = json_path_join(path, index)
            if mapping.name is not None:
                if mapping.name in seen_names:
                    self.errors.add(json_path_join(item_path, "name"), f"port name '{mapping.name}' is used twice")
                seen_names.add(mapping.name)
            if mapping.host_port:
                if mapping.host_port in seen_host_ports:
                    self.errors.add(
                        json_path_join(item_path, "hostPort"), f"host port {mapping.host_port} is used twice"
                    )
                seen_host_ports.add(mapping.host_port)

    def _check_port_definitions_unique(self, definitions: tuple[PortDefinition, ...], path: str) -> None:
        seen_names: set[str] = set()
        seen_ports: set[int] = set()
        for index, definition in enumerate(definitions):
            item_path = json_path_join(path, index)
            if definition.name is not None:
                if definition.name in seen_names:
                    self.errors.add(json_path_join(item_path, "name"), f"port name '{definition.name}' is used twice")
                seen_names.add(definition.name)
            if definition.port:
                if definition.port in seen_ports:
                    self.errors.add(json_path_join(item_path, "port"), f"port {definition.port} is used twice")
                seen_ports.add(definition.port)

    def _check_volume_binds(self, volumes: tuple[Volume, ...]) -> None:
        persistent_volume_names = {volume.container_path for volume in volumes if volume.is_persistent}
        seen_container_paths: set[str] = set()
        for index, volume in enumerate(volumes):
            item_path = f"/container/volumes({index})"
            if volume.container_path in seen_container_paths:
                self.errors.add(f"{item_path}/containerPath", f"'{volume.container_path}' is used by two volumes")
            seen_container_paths.add(volume.container_path)
            if volume.host_path is not None and volume.host_path not in persistent_volume_names:
                self.errors.add(
                    f"{item_path}/hostPath",
                    "host paths are not allowed on a multi-tenant platform; hostPath may only name a persistent "
                    "volume of this app (its containerPath) to mount it at an absolute path",
                )

    def _check_fixed_host_ports(self, ports: tuple[int | None, ...], path: str, field: str | None) -> None:
        """A fixed host port only from the platform's range and never one the platform reserves
        (0 or absent: placement allocates one from the range)."""
        for index, port in enumerate(ports):
            problem = self.policy.host_port_problem(port) if port else None
            if problem is not None:
                item_path = json_path_join(path, index)
                self.errors.add(item_path if field is None else json_path_join(item_path, field), problem)

    def _resolve_health_check_ports(
        self, health_checks: tuple[HealthCheck, ...], port_count: int, own_host_ports: set[int]
    ) -> tuple[HealthCheck, ...]:
        """HTTP/TCP probes go to the host's publish address at the checked port, so a fixed
        ``port`` must be one of the app's own fixed host ports: anything else would probe the
        host's other services. A ``portIndex`` must name one of the app's ports."""
        resolved = []
        for index, check in enumerate(health_checks):
            if check.probe is not HealthCheckProbe.COMMAND and check.port is None and check.port_index is None:
                check = dataclasses.replace(check, port_index=0)
            if (
                check.probe is not HealthCheckProbe.COMMAND
                and check.port is not None
                and check.port not in own_host_ports
            ):
                own = ", ".join(str(port) for port in sorted(own_host_ports)) or "none"
                self.errors.add(
                    f"/healthChecks({index})/port",
                    f"port {check.port} is not one of this app's own fixed host ports ({own}): a check may probe "
                    "only its instance's own ports; use portIndex to check a published port",
                )
            if check.port_index is not None and check.port_index >= port_count:
                self.errors.add(
                    f"/healthChecks({index})/portIndex",
                    f"portIndex {check.port_index} points at no port: the app has {port_count} port(s)",
                )
            resolved.append(check)
        return tuple(resolved)

    def _resolve_upgrade_strategy(self, fields: dict[str, object], is_resident: bool) -> UpgradeStrategy:
        default = _default_upgrade_strategy(is_resident)
        minimum_health_capacity = fields["minimum_health_capacity"]
        maximum_over_capacity = fields["maximum_over_capacity"]
        if is_resident and maximum_over_capacity:
            self.errors.add(
                "/upgradeStrategy/maximumOverCapacity",
                "must be 0 for apps with persistent volumes: an old instance releases its volume before a new "
                "one takes it over",
            )
        return UpgradeStrategy(
            minimum_health_capacity=float(
                default.minimum_health_capacity if minimum_health_capacity is None else minimum_health_capacity
            ),
            maximum_over_capacity=float(
                default.maximum_over_capacity if maximum_over_capacity is None else maximum_over_capacity
            ),
        )

    # ---- nested objects -----------------------------------------------------------------------

    def _env(self, env_value: object) -> Mapping[str, str]:
        env = self._object(env_value, "/env", optional=True)
        if env is None:
            return frozen_mapping({})
        policy = self.policy
        if len(env) > policy.max_env_vars:
            self.errors.add("/env", _cap_message(policy.max_env_vars, " variables"))
            return frozen_mapping({})
        variables = {}
        for name, value in env.items():
            path = json_path_join("/env", name[: policy.max_env_name_chars])  # an error echoes no huge name
            if not name or "=" in name or "\x00" in name:
                self.errors.add(path, "variable names must be non-empty and contain no '=' or NUL")
            elif len(name) > policy.max_env_name_chars:
                self.errors.add(path, f"the name {_cap_message(policy.max_env_name_chars, ' characters')}")
            if isinstance(value, str) and len(value) > policy.max_env_value_chars:
                self.errors.add(path, _cap_message(policy.max_env_value_chars, " characters"))
                continue
            if isinstance(value, dict) and "secret" in value:
                self.errors.add(
                    path, "secret references are not supported (there is no secret store); give the value as a string"
                )
            elif not isinstance(value, str):
                self.errors.add(path, "must be a string")
            elif "\x00" in value:
                self.errors.add(path, "must not contain NUL")
            else:
                variables[name] = value
        return frozen_mapping(variables)

    def _unreachable_strategy(self, value: object) -> UnreachableStrategy | None:
        path = "/unreachableStrategy"
        if value is None or value == "disabled":
            return None
        strategy = self._object(value, path, what="'disabled' or a JSON object")
        if strategy is None:
            return None
        aliases = field_policy.UNREACHABLE_STRATEGY_FIELD_ALIASES
        self._check_fields(strategy, path, frozenset(aliases))
        normalised = {aliases[key]: item for key, item in strategy.items() if key in aliases}
        cap_s = self.policy.max_unreachable_s
        inactive_after_s = self._integer(
            normalised, "inactiveAfterSeconds", path, default=0, minimum=0, cap=cap_s, unit=" s"
        )
        expunge_after_s = self._integer(
            normalised, "expungeAfterSeconds", path, default=0, minimum=0, cap=cap_s, unit=" s"
        )
        if expunge_after_s < inactive_after_s:
            self.errors.add(f"{path}/expungeAfterSeconds", "must be at least inactiveAfterSeconds")
        return UnreachableStrategy(inactive_after_s=inactive_after_s, expunge_after_s=expunge_after_s)

    def _constraints(self, value: object) -> tuple[Constraint, ...]:
        items = self._array(value, "/constraints", max_items=self.policy.max_constraints)
        constraints = []
        for index, item in enumerate(items):
            path = json_path_join("/constraints", index)
            if not isinstance(item, list) or not 2 <= len(item) <= 3:
                self.errors.add(path, "must be [field, operator] or [field, operator, value]")
                continue
            field_name, operator = item[0], item[1]
            raw_value = item[2] if len(item) == 3 else None
            if _is_integer(raw_value):
                raw_value = str(raw_value)  # marathon-python sends MAX_PER's value as a number
            if not all(isinstance(part, str) for part in (field_name, operator)) or not (
                raw_value is None or isinstance(raw_value, str)
            ):
                self.errors.add(path, "field, operator and value must be strings")
                continue
            if operator not in CONSTRAINT_OPERATORS:
                self.errors.add(
                    path,
                    f"unknown constraint operator '{operator}'; supported: {', '.join(SUPPORTED_CONSTRAINT_OPERATORS)}",
                )
                continue
            if operator not in SUPPORTED_CONSTRAINT_OPERATORS:
                self.errors.add(
                    path,
                    f"constraint operator '{operator}' is not supported; "
                    f"supported: {', '.join(SUPPORTED_CONSTRAINT_OPERATORS)}",
                )
                continue
            if field_name not in SUPPORTED_CONSTRAINT_FIELDS:
                self.errors.add(
                    path,
                    f"constraint field '{field_name}' is not supported: hosts can only be told apart by 'hostname'",
                )
                continue
            if operator == "UNIQUE" and raw_value is not None:
                self.errors.add(path, "UNIQUE takes no value")
                continue
            if operator == "MAX_PER" and (raw_value is None or not raw_value.isdigit() or int(raw_value) < 1):
                self.errors.add(path, 'MAX_PER needs a positive integer value, e.g. ["hostname", "MAX_PER", "2"]')
                continue
            constraints.append(Constraint(field=field_name, operator=operator, value=raw_value))
        return tuple(constraints)

    def _dependencies(self, value: object, app_id: str | None) -> tuple[str, ...]:
        items = self._array(value, "/dependencies", max_items=self.policy.max_dependencies)
        app_group = self.base_group if app_id is None else (app_id.rsplit("/", 1)[0] or ROOT_GROUP)
        dependencies = []
        for index, item in enumerate(items):
            path = json_path_join("/dependencies", index)
            if not isinstance(item, str):
                self.errors.add(path, "must be a string")
                continue
            try:
                dependencies.append(canonical_path_id(item, app_group))
            except InvalidPathId as error:
                self.errors.add(path, str(error))
        return tuple(dependencies)

    def _networks(self, value: object) -> tuple[Network, ...] | None:
        if value is None:
            return None
        items = self._array(value, "/networks")
        if len(items) > 1:
            self.errors.add("/networks", "an app can join at most one network")
        networks = []
        for index, item in enumerate(items):
            path = json_path_join("/networks", index)
            network = self._object(item, path)
            if network is None:
                continue
            self._check_fields(network, path, field_policy.NETWORK_SUPPORTED_FIELDS)
            mode = NetworkMode(self._choice(network, "mode", path, tuple(NetworkMode), NetworkMode.CONTAINER))
            if mode is NetworkMode.HOST:
                self.errors.add(json_path_join(path, "mode"), HOST_MODE_REFUSAL)
            name = self._string(network, "name", path, pattern=NETWORK_NAME_PATTERN, max_length=63)
            if name is not None and mode is not NetworkMode.CONTAINER:
                self.errors.add(json_path_join(path, "name"), "only networks of mode 'container' have a name")
            networks.append(
                Network(mode=mode, name=name, labels=self._string_map(network.get("labels"), f"{path}/labels"))
            )
        return tuple(networks)

    def _port_definitions(self, app: dict) -> tuple[PortDefinition, ...] | None:
        if app.get("ports") is not None and app.get("portDefinitions") is not None:
            self.errors.add("/ports", "give either 'ports' (deprecated) or 'portDefinitions', not both")
            return None
        if app.get("ports") is not None:
            definitions = []
            for index, port in enumerate(self._array(app["ports"], "/ports", max_items=self.policy.max_ports)):
                if not _is_integer(port) or not 0 <= port <= MAXIMUM_PORT:
                    self.errors.add(json_path_join("/ports", index), f"must be an integer from 0 to {MAXIMUM_PORT}")
                    continue
                definitions.append(PortDefinition(port=port))
            return tuple(definitions)
        if app.get("portDefinitions") is None:
            return None
        definitions = []
        port_definitions = self._array(app["portDefinitions"], "/portDefinitions", max_items=self.policy.max_ports)
        for index, item in enumerate(port_definitions):
            path = json_path_join("/portDefinitions", index)
            definition = self._object(item, path)
            if definition is None:
                continue
            self._check_fields(definition, path, field_policy.PORT_DEFINITION_SUPPORTED_FIELDS)
            definitions.append(
                PortDefinition(
                    port=self._integer(definition, "port", path, default=0, minimum=0, maximum=MAXIMUM_PORT),
                    protocol=self._choice(definition, "protocol", path, PORT_PROTOCOLS, "tcp"),
                    name=self._string(definition, "name", path, pattern=PORT_NAME_PATTERN),
                    labels=self._string_map(definition.get("labels"), f"{path}/labels"),
                )
            )
        return tuple(definitions)

    def _container(self, value: object) -> _ParsedContainer | None:
        path = "/container"
        container = self._object(value, path, optional=True)
        if container is None:
            return None
        self._check_fields(
            container, path, field_policy.CONTAINER_SUPPORTED_FIELDS, field_policy.CONTAINER_UNSUPPORTED_FIELDS
        )
        container_type = self._choice(container, "type", path, CONTAINER_TYPES, "DOCKER")
        docker_image, legacy_network, legacy_mappings = None, None, None
        docker = self._object(container.get("docker"), f"{path}/docker", optional=True)
        if docker is not None:
            docker_path = f"{path}/docker"
            self._check_fields(
                docker, docker_path, field_policy.DOCKER_SUPPORTED_FIELDS, field_policy.DOCKER_UNSUPPORTED_FIELDS
            )
            image = self._string(docker, "image", docker_path, required=True)
            if image is not None:
                try:
                    parse_image_reference(image)
                except InvalidImageReference as error:
                    self.errors.add(f"{docker_path}/image", str(error))
                docker_image = DockerImage(
                    image=image,
                    force_pull_image=self._boolean(docker, "forcePullImage", docker_path, default=False),
                )
            legacy_network = self._choice(docker, "network", docker_path, ("BRIDGE", "USER", "HOST", "NONE"), None)
            legacy_mappings = self._port_mappings(docker.get("portMappings"), f"{docker_path}/portMappings")

        mappings = self._port_mappings(container.get("portMappings"), f"{path}/portMappings")
        mappings_path = f"{path}/portMappings"
        if legacy_mappings and mappings:
            self.errors.add(
                f"{path}/docker/portMappings",
                "port mappings are given in both container and container.docker; use container.portMappings only",
            )
        elif legacy_mappings is not None and mappings is None:
            mappings, mappings_path = legacy_mappings, f"{path}/docker/portMappings"
        return _ParsedContainer(
            type=container_type,
            docker=docker_image,
            legacy_docker_network=legacy_network,
            port_mappings=mappings,
            port_mappings_path=mappings_path,
            volumes=self._volumes(container.get("volumes")),
        )

    def _port_mappings(self, value: object, path: str) -> tuple[PortMapping, ...] | None:
        if value is None:
            return None
        mappings = []
        for index, item in enumerate(self._array(value, path, max_items=self.policy.max_ports)):
            item_path = json_path_join(path, index)
            mapping = self._object(item, item_path)
            if mapping is None:
                continue
            self._check_fields(
                mapping,
                item_path,
                field_policy.PORT_MAPPING_SUPPORTED_FIELDS,
                field_policy.PORT_MAPPING_UNSUPPORTED_FIELDS,
            )
            mappings.append(
                PortMapping(
                    container_port=self._integer(
                        mapping, "containerPort", item_path, default=0, minimum=0, maximum=MAXIMUM_PORT
                    ),
                    host_port=self._integer(mapping, "hostPort", item_path, minimum=0, maximum=MAXIMUM_PORT),
                    service_port=self._integer(
                        mapping, "servicePort", item_path, default=0, minimum=0, maximum=MAXIMUM_PORT
                    ),
                    protocol=self._choice(mapping, "protocol", item_path, PORT_PROTOCOLS, "tcp"),
                    name=self._string(mapping, "name", item_path, pattern=PORT_NAME_PATTERN),
                    labels=self._string_map(mapping.get("labels"), f"{item_path}/labels"),
                )
            )
        return tuple(mappings)

    def _volumes(self, value: object) -> tuple[Volume, ...]:
        volumes = []
        for index, item in enumerate(self._array(value, "/container/volumes", max_items=self.policy.max_volumes)):
            path = f"/container/volumes({index})"
            volume = self._object(item, path)
            if volume is None:
                continue
            self._check_fields(
                volume, path, field_policy.VOLUME_SUPPORTED_FIELDS, field_policy.VOLUME_UNSUPPORTED_FIELDS
            )
            container_path = self._string(volume, "containerPath", path, required=True, cap=self.policy.max_name_chars)
            mode = self._choice(volume, "mode", path, VOLUME_MODES, "RW")
            host_path = self._string(volume, "hostPath", path, cap=self.policy.max_name_chars)
            persistent = self._object(volume.get("persistent"), f"{path}/persistent", optional=True)
            size_mib = None
            if persistent is not None:
                self._check_fields(
                    persistent,
                    f"{path}/persistent",
                    field_policy.PERSISTENT_VOLUME_SUPPORTED_FIELDS,
                    field_policy.PERSISTENT_VOLUME_UNSUPPORTED_FIELDS,
                )
                size_mib = self._integer(
                    persistent,
                    "size",
                    f"{path}/persistent",
                    minimum=1,
                    required=True,
                    cap=self.policy.max_volume_size_mib,
                    unit=" MiB",
                )
            if (persistent is None) == (host_path is None):
                if volume.get("external") is None:
                    self.errors.add(path, "a volume needs exactly one of 'persistent' and 'hostPath'")
                continue
            if container_path is None:
                continue
            if persistent is not None:
                if "/" in container_path or container_path in (".", ".."):
                    self.errors.add(
                        f"{path}/containerPath",
                        "a persistent volume's containerPath is one relative name (no '/', not '.' or '..')",
                    )
                if mode != "RW":
                    self.errors.add(f"{path}/mode", "persistent volumes must be RW")
            elif not container_path.startswith("/") or ".." in container_path.split("/"):
                self.errors.add(f"{path}/containerPath", "must be an absolute path without '..'")
            volumes.append(
                Volume(container_path=container_path, mode=mode, persistent_size_mib=size_mib, host_path=host_path)
            )
        return tuple(volumes)

    def _health_checks(self, value: object) -> tuple[HealthCheck, ...]:
        checks = []
        policy = self.policy
        for index, item in enumerate(self._array(value, "/healthChecks", max_items=policy.max_health_checks)):
            path = json_path_join("/healthChecks", index)
            check = self._object(item, path)
            if check is None:
                continue
            self._check_fields(
                check, path, field_policy.HEALTH_CHECK_SUPPORTED_FIELDS, field_policy.HEALTH_CHECK_UNSUPPORTED_FIELDS
            )
            protocol = self._choice(check, "protocol", path, HEALTH_CHECK_PROTOCOLS, "HTTP")
            probe = HealthCheck(protocol=protocol).probe
            is_http = probe in (HealthCheckProbe.HTTP, HealthCheckProbe.HTTPS)
            path_value = self._string(check, "path", path, cap=policy.max_name_chars)
            if path_value is not None and not is_http:
                self.errors.add(f"{path}/path", "only HTTP and HTTPS checks use a path")
            if path_value is not None and not path_value.startswith("/"):
                self.errors.add(f"{path}/path", "must start with '/'")
            command = None
            if check.get("command") is not None:
                command_object = self._object(check["command"], f"{path}/command")
                if command_object is not None:
                    self._check_fields(command_object, f"{path}/command", frozenset({"value"}))
                    command = self._string(
                        command_object, "value", f"{path}/command", required=True, max_length=MAX_CHECK_COMMAND_CHARS
                    )
                if probe is not HealthCheckProbe.COMMAND:
                    self.errors.add(f"{path}/command", "only COMMAND checks run a command")
            elif probe is HealthCheckProbe.COMMAND:
                self.errors.add(f"{path}/command", "is required for COMMAND checks")
            port_index = self._integer(check, "portIndex", path, minimum=0)
            port = self._integer(check, "port", path, minimum=1, maximum=MAXIMUM_PORT)
            if port is not None and port_index is not None:
                self.errors.add(path, "give 'port' or 'portIndex', not both")
            ignore_http1xx = self._boolean(check, "ignoreHttp1xx", path, default=False)
            if ignore_http1xx and not is_http:
                self.errors.add(f"{path}/ignoreHttp1xx", "only applies to HTTP and HTTPS checks")
            checks.append(
                HealthCheck(
                    protocol=protocol,
                    path=(path_value or "/") if is_http else None,
                    port_index=port_index,
                    port=port,
                    command=command,
                    grace_period_s=self._integer(
                        check,
                        "gracePeriodSeconds",
                        path,
                        default=300,
                        minimum=0,
                        cap=policy.max_health_grace_period_s,
                        unit=" s",
                    ),
                    interval_s=self._integer(
                        check,
                        "intervalSeconds",
                        path,
                        default=60,
                        minimum=1,
                        cap=policy.max_health_interval_s,
                        unit=" s",
                    ),
                    timeout_s=self._integer(
                        check, "timeoutSeconds", path, default=20, minimum=1, cap=policy.max_health_timeout_s, unit=" s"
                    ),
                    max_consecutive_failures=self._integer(
                        check,
                        "maxConsecutiveFailures",
                        path,
                        default=3,
                        minimum=0,
                        cap=policy.max_health_consecutive_failures,
                    ),
                    delay_s=self._integer(
                        check, "delaySeconds", path, default=15, minimum=0, cap=policy.max_health_delay_s, unit=" s"
                    ),
                    ignore_http1xx=ignore_http1xx,
                )
            )
        return tuple(checks)

    # ---- readers: each reports its own errors and returns a usable value ----------------------

    def _check_fields(
        self,
        obj: dict,
        path: str,
        supported: frozenset[str],
        unsupported: Mapping[str, UnsupportedField] | None = None,
        *,
        ignored: frozenset[str] = frozenset(),
    ) -> None:
        for key, value in obj.items():
            if key in supported or key in ignored:
                continue
            policy = (unsupported or {}).get(key)
            if policy is None:
                self.errors.add(json_path_join(path, key), f"unknown field '{key}'")
            elif not policy.accepts(value):
                self.errors.add(json_path_join(path, key), f"'{key}' is not supported: {policy.reason}")

    def _object(self, value: object, path: str, *, optional: bool = False, what: str = "a JSON object") -> dict | None:
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            self.errors.add(path, f"must be {what}")
            return None
        return value

    def _array(self, value: object, path: str, *, max_items: int | None = None) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.errors.add(path, "must be a JSON array")
            return []
        if max_items is not None and len(value) > max_items:
            self.errors.add(path, _cap_message(max_items, " items"))
            return value[:max_items]  # the rest is not examined: the request is refused anyway
        return value

    def _string(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        max_length: int | None = None,
        cap: int | None = None,
    ) -> str | None:
        value, field_path = obj.get(key), json_path_join(path, key)
        if value is None:
            if required:
                self.errors.add(field_path, "is required")
            return None
        if not isinstance(value, str):
            self.errors.add(field_path, "must be a string")
            return None
        if not value:
            self.errors.add(field_path, "must not be empty")
            return None
        if "\x00" in value:
            self.errors.add(field_path, "must not contain NUL")
            return None
        if pattern is not None and not pattern.match(value):
            self.errors.add(field_path, f"'{value}' does not match {pattern.pattern}")
        if max_length is not None and len(value) > max_length:
            self.errors.add(field_path, f"must be at most {max_length} characters")
        if cap is not None and len(value) > cap:
            self.errors.add(field_path, _cap_message(cap, " characters"))
        return value

    def _string_list(
        self, obj: dict, key: str, path: str, *, max_items: int, max_item_chars: int
    ) -> tuple[str, ...] | None:
        field_path = json_path_join(path, key)
        if obj.get(key) is None:
            return None
        strings = []
        for index, item in enumerate(self._array(obj[key], field_path, max_items=max_items)):
            if not isinstance(item, str):
                self.errors.add(json_path_join(field_path, index), "must be a string")
            elif len(item) > max_item_chars:
                self.errors.add(json_path_join(field_path, index), _cap_message(max_item_chars, " characters"))
            else:
                strings.append(item)
        return tuple(strings)

    def _string_map(self, value: object, path: str) -> Mapping[str, str]:
        mapping = self._object(value, path, optional=True)
        if mapping is None:
            return frozen_mapping({})
        policy = self.policy
        if len(mapping) > policy.max_labels:
            self.errors.add(path, _cap_message(policy.max_labels, " entries"))
            return frozen_mapping({})
        for key, item in mapping.items():
            if not isinstance(item, str):
                self.errors.add(json_path_join(path, key), "must be a string")
            elif len(key) > policy.max_label_key_chars:
                self.errors.add(
                    json_path_join(path, key[: policy.max_label_key_chars]),  # an error echoes no huge key
                    f"the name {_cap_message(policy.max_label_key_chars, ' characters')}",
                )
            elif len(item) > policy.max_label_value_chars:
                self.errors.add(json_path_join(path, key), _cap_message(policy.max_label_value_chars, " characters"))
        return frozen_mapping({key: item for key, item in mapping.items() if isinstance(item, str)})

    def _integer(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = False,
        cap: int | None = None,
        unit: str = "",
    ) -> int | None:
        """``maximum`` is Marathon's own bound; ``cap`` is the platform's, named as such in the 422."""
        value, field_path = obj.get(key), json_path_join(path, key)
        if value is None:
            if required:
                self.errors.add(field_path, "is required")
            return default
        if not _is_integer(value):
            self.errors.add(field_path, "must be an integer")
            return default
        if not self._in_range(value, field_path, minimum, maximum):
            return default
        return default if self._over_cap(value, field_path, cap, unit) else value

    def _number(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        cap: float | None = None,
        unit: str = "",
    ) -> float | None:
        value, field_path = obj.get(key), json_path_join(path, key)
        if value is None:
            return default
        if not _is_number(value):
            self.errors.add(field_path, "must be a number")
            return default
        if not self._in_range(value, field_path, minimum, maximum):
            return default
        return default if self._over_cap(value, field_path, cap, unit) else value

    def _over_cap(self, value: float, path: str, cap: float | None, unit: str) -> bool:
        if cap is not None and value > cap:
            self.errors.add(path, _cap_message(cap, unit))
            return True
        return False

    def _in_range(self, value: float, path: str, minimum: float | None, maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            self.errors.add(
                path, f"must be at least {minimum}" if maximum is None else f"must be from {minimum} to {maximum}"
            )
            return False
        if maximum is not None and value > maximum:
            self.errors.add(
                path, f"must be at most {maximum}" if minimum is None else f"must be from {minimum} to {maximum}"
            )
            return False
        return True

    def _boolean(self, obj: dict, key: str, path: str, *, default: bool) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.errors.add(json_path_join(path, key), "must be true or false")
            return default
        return value

    def _choice(self, obj: dict, key: str, path: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = obj.get(key)
        if value is None:
            return default
        if value not in choices:
            self.errors.add(json_path_join(path, key), f"'{value}' is not one of: {', '.join(choices)}")
            return default
        return value
