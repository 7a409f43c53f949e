"""The platform policy in the parser (issue 9): fixed host ports only from the platform's range
and never a reserved one, health checks only on the app's own ports, and a cap on every
tenant-chosen time and size; each edge value is accepted and one over it is refused by path
with the limit in the message."""

from __future__ import annotations

import pytest

from portal.marathon import merge_app_definition, parse_app_definition
from portal.marathon.platform_policy import PlatformPolicy

from .marathon_payloads import bridge_web_app, command_app, errors_by_path

DEFAULT = PlatformPolicy()
# Small caps keep the payloads of the size rules small; the rules are the same at any size.
SMALL = PlatformPolicy(
    max_cmd_chars=10,
    max_args=2,
    max_arg_chars=5,
    max_env_vars=2,
    max_env_name_chars=5,
    max_env_value_chars=5,
    max_labels=2,
    max_label_key_chars=5,
    max_label_value_chars=5,
    max_ports=2,
    max_health_checks=2,
    max_volumes=1,
    max_constraints=1,
    max_dependencies=1,
    max_name_chars=5,
)


def check(**fields) -> dict:
    return bridge_web_app(healthChecks=[{"protocol": "HTTP", "portIndex": 0, **fields}])


def with_mappings(*mappings: dict) -> dict:
    app = bridge_web_app(healthChecks=[])
    app["container"]["portMappings"] = list(mappings)
    return app


def volumes(count: int, size: int = 1) -> dict:
    return command_app(
        container={"volumes": [{"containerPath": f"v{i}", "persistent": {"size": size}} for i in range(count)]}
    )


# (what, builder of the definition for a value, edge value, one over, path, message)
TIME_AND_SIZE_CAPS = [
    (
        "kill grace",
        lambda v: command_app(taskKillGracePeriodSeconds=v),
        120,
        121,
        "/taskKillGracePeriodSeconds",
        "must be at most 120 s (platform limit)",
    ),
    (
        "backoff",
        lambda v: command_app(backoffSeconds=v),
        3600,
        3601,
        "/backoffSeconds",
        "must be at most 3600 s (platform limit)",
    ),
    (
        "backoff factor",
        lambda v: command_app(backoffFactor=v),
        10,
        10.5,
        "/backoffFactor",
        "must be at most 10 (platform limit)",
    ),
    (
        "launch delay",
        lambda v: command_app(maxLaunchDelaySeconds=v),
        3600,
        3601,
        "/maxLaunchDelaySeconds",
        "must be at most 3600 s (platform limit)",
    ),
    ("instances", lambda v: command_app(instances=v), 100, 101, "/instances", "must be at most 100 (platform limit)"),
    ("cpus", lambda v: command_app(cpus=v), 64, 64.5, "/cpus", "must be at most 64 (platform limit)"),
    ("mem", lambda v: command_app(mem=v), 65536, 65537, "/mem", "must be at most 65536 MiB (platform limit)"),
    ("disk", lambda v: command_app(disk=v), 1048576, 1048577, "/disk", "must be at most 1048576 MiB (platform limit)"),
    (
        "check grace",
        lambda v: check(gracePeriodSeconds=v),
        3600,
        3601,
        "/healthChecks(0)/gracePeriodSeconds",
        "must be at most 3600 s (platform limit)",
    ),
    (
        "check interval",
        lambda v: check(intervalSeconds=v),
        3600,
        3601,
        "/healthChecks(0)/intervalSeconds",
        "must be at most 3600 s (platform limit)",
    ),
    (
        "check timeout",
        lambda v: check(timeoutSeconds=v),
        60,
        61,
        "/healthChecks(0)/timeoutSeconds",
        "must be at most 60 s (platform limit)",
    ),
    (
        "check delay",
        lambda v: check(delaySeconds=v),
        3600,
        3601,
        "/healthChecks(0)/delaySeconds",
        "must be at most 3600 s (platform limit)",
    ),
    (
        "check failures",
        lambda v: check(maxConsecutiveFailures=v),
        100,
        101,
        "/healthChecks(0)/maxConsecutiveFailures",
        "must be at most 100 (platform limit)",
    ),
    (
        "unreachable",
        lambda v: command_app(unreachableStrategy={"inactiveAfterSeconds": 1, "expungeAfterSeconds": v}),
        86400,
        86401,
        "/unreachableStrategy/expungeAfterSeconds",
        "must be at most 86400 s (platform limit)",
    ),
    (
        "volume size",
        lambda v: volumes(1, v),
        1048576,
        1048577,
        "/container/volumes(0)/persistent/size",
        "must be at most 1048576 MiB (platform limit)",
    ),
    (
        "id",
        lambda v: command_app(id="/" + "a" * (v - 1)),
        255,
        256,
        "/id",
        "must be at most 255 characters (platform limit)",
    ),
]

SMALL_CAPS = [
    ("cmd", lambda v: command_app(cmd="x" * v), 10, 11, "/cmd", "must be at most 10 characters (platform limit)"),
    ("args", lambda v: {"id": "/a", "args": ["x"] * v}, 2, 3, "/args", "must be at most 2 items (platform limit)"),
    (
        "arg",
        lambda v: {"id": "/a", "args": ["x" * v]},
        5,
        6,
        "/args(0)",
        "must be at most 5 characters (platform limit)",
    ),
    (
        "env count",
        lambda v: command_app(env={f"E{i}": "v" for i in range(v)}),
        2,
        3,
        "/env",
        "must be at most 2 variables (platform limit)",
    ),
    (
        "env name",
        lambda v: command_app(env={"E" * v: "v"}),
        5,
        6,
        "/env/EEEEE",
        "the name must be at most 5 characters (platform limit)",
    ),
    (
        "env value",
        lambda v: command_app(env={"E": "v" * v}),
        5,
        6,
        "/env/E",
        "must be at most 5 characters (platform limit)",
    ),
    (
        "labels",
        lambda v: command_app(labels={f"l{i}": "v" for i in range(v)}),
        2,
        3,
        "/labels",
        "must be at most 2 entries (platform limit)",
    ),
    (
        "label key",
        lambda v: command_app(labels={"k" * v: "v"}),
        5,
        6,
        "/labels/kkkkk",
        "the name must be at most 5 characters (platform limit)",
    ),
    (
        "label value",
        lambda v: command_app(labels={"k": "v" * v}),
        5,
        6,
        "/labels/k",
        "must be at most 5 characters (platform limit)",
    ),
    (
        "ports",
        lambda v: with_mappings(*({"containerPort": 80 + i} for i in range(v))),
        2,
        3,
        "/container/portMappings",
        "must be at most 2 items (platform limit)",
    ),
    (
        "checks",
        lambda v: bridge_web_app(healthChecks=[{"portIndex": 0}] * v),
        2,
        3,
        "/healthChecks",
        "must be at most 2 items (platform limit)",
    ),
    ("volumes", volumes, 1, 2, "/container/volumes", "must be at most 1 items (platform limit)"),
    (
        "constraints",
        lambda v: command_app(constraints=[["hostname", "UNIQUE"]] * v),
        1,
        2,
        "/constraints",
        "must be at most 1 items (platform limit)",
    ),
    (
        "dependencies",
        lambda v: command_app(dependencies=["/db"] * v),
        1,
        2,
        "/dependencies",
        "must be at most 1 items (platform limit)",
    ),
    ("user", lambda v: command_app(user="u" * v), 5, 6, "/user", "must be at most 5 characters (platform limit)"),
    (
        "check path",
        lambda v: check(path="/" + "p" * (v - 1)),
        5,
        6,
        "/healthChecks(0)/path",
        "must be at most 5 characters (platform limit)",
    ),
]


@pytest.mark.parametrize(
    ("policy", "build", "edge", "over", "path", "message"),
    [(DEFAULT, *case[1:]) for case in TIME_AND_SIZE_CAPS] + [(SMALL, *case[1:]) for case in SMALL_CAPS],
    ids=[case[0] for case in TIME_AND_SIZE_CAPS + SMALL_CAPS],
)
def test_each_cap_takes_its_edge_value_and_refuses_one_over(policy, build, edge, over, path, message):
    parse_app_definition(build(edge), policy=policy)
    assert message in errors_by_path(build(over), policy=policy).get(path, []), errors_by_path(
        build(over), policy=policy
    )


def test_marathon_defaults_are_inside_every_cap():
    definition = parse_app_definition(bridge_web_app(healthChecks=[{}], taskKillGracePeriodSeconds=3))
    assert definition.health_checks[0].grace_period_s == 300
    assert (definition.backoff_s, definition.max_launch_delay_s) == (1, 300)


@pytest.mark.parametrize("host_port", [20000, 30000])
def test_a_fixed_host_port_at_either_end_of_the_range_is_accepted(host_port):
    definition = parse_app_definition(with_mappings({"containerPort": 80, "hostPort": host_port}))
    assert definition.container.port_mappings[0].host_port == host_port


@pytest.mark.parametrize("host_port", [5999, 19999, 30001])
def test_a_fixed_host_port_outside_the_range_is_refused_naming_the_range(host_port):
    errors = errors_by_path(with_mappings({"containerPort": 80, "hostPort": host_port}))
    assert errors["/container/portMappings(0)/hostPort"] == [
        f"host port {host_port} is outside the platform's host port range 20000-30000; use 0 to have one allocated"
    ]


def test_a_reserved_port_inside_the_range_is_refused():
    policy = PlatformPolicy(reserved_host_ports=frozenset({25000}))
    errors = errors_by_path(with_mappings({"containerPort": 80, "hostPort": 25000}), policy=policy)
    assert "reserved by the platform" in errors["/container/portMappings(0)/hostPort"][0]
    parse_app_definition(with_mappings({"containerPort": 80, "hostPort": 25001}), policy=policy)


def test_legacy_docker_port_mappings_are_checked_at_their_own_path():
    app = bridge_web_app(healthChecks=[])
    app.pop("networks")
    app["container"] = {
        "docker": {"image": "x", "network": "BRIDGE", "portMappings": [{"containerPort": 80, "hostPort": 80}]}
    }
    assert "/container/docker/portMappings(0)/hostPort" in errors_by_path(app)


def test_host_networking_fixes_ports_only_with_require_ports():
    parse_app_definition(command_app(portDefinitions=[{"port": 5999}]))  # a service port: nothing is published on it
    assert (
        "outside"
        in errors_by_path(command_app(portDefinitions=[{"port": 5999}], requirePorts=True))["/portDefinitions(0)/port"][
            0
        ]
    )
    assert "outside" in errors_by_path(command_app(ports=[5999], requirePorts=True))["/ports(0)"][0]


@pytest.mark.parametrize("protocol", ["TCP", "HTTP", "HTTPS", "MESOS_TCP", "MESOS_HTTP"])
def test_a_check_on_a_port_that_is_not_the_apps_own_is_refused(protocol):
    app = with_mappings({"containerPort": 8080, "hostPort": 21000})
    app["healthChecks"] = [{"protocol": protocol, "port": 6379}]
    assert errors_by_path(app)["/healthChecks(0)/port"] == [
        "port 6379 is not one of this app's own fixed host ports (21000): a check may probe only its instance's "
        "own ports; use portIndex to check a published port"
    ]


def test_a_check_on_the_apps_own_fixed_port_or_by_index_is_accepted():
    app = with_mappings({"containerPort": 8080, "hostPort": 21000}, {"containerPort": 8081, "hostPort": 0})
    app["healthChecks"] = [
        {"protocol": "TCP", "port": 21000},
        {"protocol": "HTTP", "portIndex": 1},
        {"protocol": "COMMAND", "command": {"value": "true"}},
    ]
    assert len(parse_app_definition(app).health_checks) == 3
    host_mode = command_app(
        portDefinitions=[{"port": 21000}], requirePorts=True, healthChecks=[{"protocol": "TCP", "port": 21000}]
    )
    parse_app_definition(host_mode)


def test_a_check_port_cannot_name_a_container_port_or_an_allocated_one():
    app = with_mappings({"containerPort": 8080, "hostPort": 0})
    app["healthChecks"] = [{"protocol": "HTTP", "port": 8080}]
    assert "(none)" in errors_by_path(app)["/healthChecks(0)/port"][0]


def test_a_port_index_must_point_at_a_port():
    app = with_mappings({"containerPort": 8080, "hostPort": 0})
    app["healthChecks"] = [{"protocol": "HTTP", "portIndex": 1}]
    assert "points at no port" in errors_by_path(app)["/healthChecks(0)/portIndex"][0]


def test_a_merge_checks_the_stored_fields_against_todays_policy():
    existing = parse_app_definition(command_app(taskKillGracePeriodSeconds=100))
    tighter = PlatformPolicy(max_task_kill_grace_period_s=60)
    with pytest.raises(Exception, match="must be at most 60 s"):
        merge_app_definition(existing, {"instances": 2}, policy=tighter)
    assert (
        merge_app_definition(existing, {"taskKillGracePeriodSeconds": 60}, policy=tighter).task_kill_grace_period_s
        == 60
    )
