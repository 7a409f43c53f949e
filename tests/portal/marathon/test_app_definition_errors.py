"""Bad definitions: every error collected, each at Marathon's path, unsupported fields named."""

import pytest

from portal.marathon import MarathonValidationError, parse_app_definition
from portal.marathon.field_policy import APP_UNSUPPORTED_FIELDS

from .marathon_payloads import bridge_web_app, command_app, errors_by_path

DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("gpus", 1),
        ("fetch", [{"uri": "https://example.com/app.tgz"}]),
        ("uris", ["https://example.com/app.tgz"]),
        ("storeUrls", ["https://example.com"]),
        ("secrets", {"db": {"source": "/db/password"}}),
        ("readinessChecks", [{"name": "ready", "path": "/ready", "portName": "default"}]),
        ("executor", "/custom/executor"),
        ("executorResources", {"cpus": 0.1}),
        ("ipAddress", {"networkName": "backend"}),
        ("tty", True),
        ("resourceLimits", {"cpus": "unlimited"}),
        ("taskRateLimit", 1.0),
        ("check", {"http": {"portIndex": 0}}),
        ("somethingElse", 1),
    ],
)
def test_unsupported_app_fields_are_rejected_by_name(field_name, value):
    errors = errors_by_path(command_app(**{field_name: value}))
    assert list(errors) == [f"/{field_name}"]
    assert f"'{field_name}'" in errors[f"/{field_name}"][0]


def test_every_unsupported_app_field_has_a_reason():
    assert all(policy.reason for policy in APP_UNSUPPORTED_FIELDS.values())


@pytest.mark.parametrize(
    ("container", "bad_path"),
    [
        ({"docker": {"image": "x", "privileged": True}}, "/container/docker/privileged"),
        (
            {"docker": {"image": "x", "parameters": [{"key": "cap-add", "value": "ALL"}]}},
            "/container/docker/parameters",
        ),
        ({"docker": {"image": "x", "credential": {"principal": "p"}}}, "/container/docker/credential"),
        ({"docker": {"image": "x", "pullConfig": {"secret": "s"}}}, "/container/docker/pullConfig"),
        ({"docker": {"image": "x", "shmSize": 64}}, "/container/docker/shmSize"),
        ({"appc": {"image": "x"}}, "/container/appc"),
        ({"linuxInfo": {"seccomp": {"unconfined": True}}}, "/container/linuxInfo"),
        ({"volumes": [{"containerPath": "/x", "external": {"name": "v"}}]}, "/container/volumes(0)/external"),
        (
            {"volumes": [{"containerPath": "d", "persistent": {"size": 1, "type": "mount"}}]},
            "/container/volumes(0)/persistent/type",
        ),
        (
            {"volumes": [{"containerPath": "d", "persistent": {"size": 1, "profileName": "fast"}}]},
            "/container/volumes(0)/persistent/profileName",
        ),
        ({"portMappings": [{"containerPort": 80, "networkNames": ["a"]}]}, "/container/portMappings(0)/networkNames"),
    ],
)
def test_unsupported_nested_fields_are_rejected_by_name(container, bad_path):
    app = command_app(container=container, networks=[{"mode": "container/bridge"}])
    errors = errors_by_path(app)
    assert bad_path in errors
    assert f"'{bad_path.rsplit('/', 1)[1]}'" in errors[bad_path][0]


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        ({"cpus": "1"}, "/cpus", "must be a number"),
        ({"cpus": 0}, "/cpus", "must be at least 0.001"),
        ({"cpus": -1}, "/cpus", "must be at least 0.001"),
        ({"cpus": True}, "/cpus", "must be a number"),
        ({"mem": -1}, "/mem", "must be at least 0"),
        ({"mem": "128Mi"}, "/mem", "must be a number"),
        ({"disk": -0.5}, "/disk", "must be at least 0"),
        ({"instances": 1.5}, "/instances", "must be an integer"),
        ({"instances": -1}, "/instances", "must be at least 0"),
        ({"instances": "2"}, "/instances", "must be an integer"),
        ({"cmd": ""}, "/cmd", "must not be empty"),
        ({"cmd": ["sleep"]}, "/cmd", "must be a string"),
        ({"args": "sleep 1"}, "/args", "must be a JSON array"),
        ({"args": ["ok", 1]}, "/args(1)", "must be a string"),
        ({"user": 0}, "/user", "must be a string"),
        ({"env": {"A": 1}}, "/env/A", "must be a string"),
        ({"env": {"A=B": "x"}}, "/env/A=B", "no '='"),
        ({"env": {"DB_PASSWORD": {"secret": "db"}}}, "/env/DB_PASSWORD", "secret references are not supported"),
        ({"env": ["A=1"]}, "/env", "must be a JSON object"),
        ({"labels": {"a/b": 1}}, "/labels/a~1b", "must be a string"),
        ({"id": "/Shop/Web"}, "/id", "segment 'Shop'"),
        ({"id": "/"}, "/id", "root group"),
        ({"id": 7}, "/id", "must be a string"),
        ({"backoffSeconds": 0.5}, "/backoffSeconds", "must be an integer"),
        ({"backoffFactor": 0.5}, "/backoffFactor", "must be at least 1.0"),
        ({"maxLaunchDelaySeconds": -1}, "/maxLaunchDelaySeconds", "must be at least 0"),
        ({"taskKillGracePeriodSeconds": -1}, "/taskKillGracePeriodSeconds", "must be at least 0"),
        ({"requirePorts": "yes"}, "/requirePorts", "must be true or false"),
        ({"killSelection": "RANDOM"}, "/killSelection", "'RANDOM' is not one of"),
        (
            {"upgradeStrategy": {"minimumHealthCapacity": 1.5}},
            "/upgradeStrategy/minimumHealthCapacity",
            "must be from 0 to 1",
        ),
        (
            {"upgradeStrategy": {"maximumOverCapacity": -0.1}},
            "/upgradeStrategy/maximumOverCapacity",
            "must be from 0 to 1",
        ),
        ({"upgradeStrategy": {"minimumHealthCapacity": 1, "speed": 2}}, "/upgradeStrategy/speed", "unknown field"),
        ({"unreachableStrategy": "enabled"}, "/unreachableStrategy", "'disabled' or a JSON object"),
        (
            {"unreachableStrategy": {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 30}},
            "/unreachableStrategy/expungeAfterSeconds",
            "at least inactiveAfterSeconds",
        ),
        ({"constraints": [["hostname", "FOO"]]}, "/constraints(0)", "unknown constraint operator 'FOO'"),
        ({"constraints": [["hostname", "LIKE", "a.*"]]}, "/constraints(0)", "'LIKE' is not supported"),
        ({"constraints": [["rack", "UNIQUE"]]}, "/constraints(0)", "constraint field 'rack' is not supported"),
        ({"constraints": [["hostname", "UNIQUE", "x"]]}, "/constraints(0)", "UNIQUE takes no value"),
        ({"constraints": [["hostname", "MAX_PER"]]}, "/constraints(0)", "MAX_PER needs a positive integer"),
        ({"constraints": [["hostname", "MAX_PER", "0"]]}, "/constraints(0)", "MAX_PER needs a positive integer"),
        ({"constraints": [["hostname"]]}, "/constraints(0)", "must be [field, operator]"),
        ({"constraints": ["hostname:UNIQUE"]}, "/constraints(0)", "must be [field, operator]"),
        ({"dependencies": ["/Bad"]}, "/dependencies(0)", "segment 'Bad'"),
        ({"ports": [70000]}, "/ports(0)", "from 0 to 65535"),
        ({"ports": [0], "portDefinitions": [{"port": 0}]}, "/ports", "not both"),
        ({"portDefinitions": [{"port": 80, "protocol": "sctp"}]}, "/portDefinitions(0)/protocol", "'sctp'"),
        ({"portDefinitions": [{"name": "Bad_Name"}]}, "/portDefinitions(0)/name", "does not match"),
        ({"portDefinitions": [{"port": 80}, {"port": 80}]}, "/portDefinitions(1)/port", "port 80 is used twice"),
        (
            {"portDefinitions": [{"name": "a"}, {"name": "a"}]},
            "/portDefinitions(1)/name",
            "port name 'a' is used twice",
        ),
        ({"networks": [{"mode": "overlay"}]}, "/networks(0)/mode", "'overlay' is not one of"),
        ({"networks": [{"mode": "host", "name": "x"}]}, "/networks(0)/name", "only networks of mode 'container'"),
        ({"networks": [{"mode": "container"}, {"mode": "container", "name": "b"}]}, "/networks", "at most one"),
        ({"networks": [{"mode": "container/bridge"}]}, "/networks", "needs a 'container'"),
        ({"healthChecks": [{"protocol": "GRPC"}]}, "/healthChecks(0)/protocol", "'GRPC' is not one of"),
        ({"healthChecks": [{"portIndex": 1}]}, "/healthChecks(0)/portIndex", "portIndex 1 points at no port"),
        ({"healthChecks": [{"portIndex": 0, "port": 80}]}, "/healthChecks(0)", "not both"),
        ({"healthChecks": [{"protocol": "TCP", "path": "/x"}]}, "/healthChecks(0)/path", "only HTTP and HTTPS"),
        ({"healthChecks": [{"path": "health"}]}, "/healthChecks(0)/path", "must start with '/'"),
        ({"healthChecks": [{"protocol": "COMMAND"}]}, "/healthChecks(0)/command", "is required for COMMAND"),
        ({"healthChecks": [{"command": {"value": "true"}}]}, "/healthChecks(0)/command", "only COMMAND checks"),
        (
            {"healthChecks": [{"protocol": "TCP", "ignoreHttp1xx": True}]},
            "/healthChecks(0)/ignoreHttp1xx",
            "only applies to HTTP",
        ),
        ({"healthChecks": [{"intervalSeconds": 0}]}, "/healthChecks(0)/intervalSeconds", "must be at least 1"),
        ({"healthChecks": [{"port": 0}]}, "/healthChecks(0)/port", "from 1 to 65535"),
        ({"healthChecks": [{"ipProtocol": "IPv6"}]}, "/healthChecks(0)/ipProtocol", "'ipProtocol' is not supported"),
    ],
)
def test_bad_values_are_reported_at_marathons_path(overrides, path, message):
    errors = errors_by_path(command_app(**overrides))
    assert path in errors, errors
    assert any(message in error for error in errors[path]), errors[path]


@pytest.mark.parametrize(
    ("container", "path", "message"),
    [
        ({"docker": {}}, "/container/docker/image", "is required"),
        ({"docker": {"image": "Bad:Image"}}, "/container/docker/image", "must be lowercase"),
        ({"docker": {"image": "nginx@sha256:abc"}}, "/container/docker/image", "digest"),
        ({"docker": {"image": "x", "forcePullImage": "yes"}}, "/container/docker/forcePullImage", "true or false"),
        ({"type": "RKT"}, "/container/type", "'RKT' is not one of: DOCKER, MESOS"),
        ({"docker": {"image": "x", "network": "NONE"}}, "/container/docker/network", "'NONE' is not supported"),
        ({"portMappings": [{"containerPort": 80}]}, "/container/portMappings", "need a container network"),
        (
            {"docker": {"image": "x", "portMappings": [{"containerPort": 80}]}},
            "/container/docker/portMappings",
            "need a container network",
        ),
        (
            {"volumes": [{"containerPath": "data", "persistent": {"size": 0}}]},
            "/container/volumes(0)/persistent/size",
            "must be at least 1",
        ),
        (
            {"volumes": [{"containerPath": "data", "persistent": {}}]},
            "/container/volumes(0)/persistent/size",
            "is required",
        ),
        (
            {"volumes": [{"containerPath": "a/b", "persistent": {"size": 1}}]},
            "/container/volumes(0)/containerPath",
            "one relative name",
        ),
        (
            {"volumes": [{"containerPath": "..", "persistent": {"size": 1}}]},
            "/container/volumes(0)/containerPath",
            "one relative name",
        ),
        (
            {"volumes": [{"containerPath": "d", "mode": "RO", "persistent": {"size": 1}}]},
            "/container/volumes(0)/mode",
            "must be RW",
        ),
        (
            {"volumes": [{"containerPath": "d", "mode": "rw", "persistent": {"size": 1}}]},
            "/container/volumes(0)/mode",
            "'rw' is not one of",
        ),
        (
            {"volumes": [{"containerPath": "/data", "hostPath": "/etc", "mode": "RO"}]},
            "/container/volumes(0)/hostPath",
            "host paths are not allowed",
        ),
        (
            {"volumes": [{"containerPath": "d", "persistent": {"size": 1}}, {"containerPath": "rel", "hostPath": "d"}]},
            "/container/volumes(1)/containerPath",
            "absolute path",
        ),
        (
            {
                "volumes": [
                    {"containerPath": "d", "persistent": {"size": 1}},
                    {"containerPath": "d", "persistent": {"size": 2}},
                ]
            },
            "/container/volumes(1)/containerPath",
            "used by two volumes",
        ),
        ({"volumes": [{"containerPath": "d"}]}, "/container/volumes(0)", "exactly one of 'persistent' and 'hostPath'"),
    ],
)
def test_bad_containers_are_reported_at_marathons_path(container, path, message):
    errors = errors_by_path(command_app(container=container))
    assert path in errors, errors
    assert any(message in error for error in errors[path]), errors[path]


@pytest.mark.parametrize(
    ("mappings", "path", "message"),
    [
        ([{"containerPort": 70000}], "/container/portMappings(0)/containerPort", "from 0 to 65535"),
        ([{"containerPort": 80, "hostPort": -1}], "/container/portMappings(0)/hostPort", "from 0 to 65535"),
        ([{"containerPort": 80, "hostPort": 65536}], "/container/portMappings(0)/hostPort", "from 0 to 65535"),
        (
            [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}],
            "/container/portMappings(1)/hostPort",
            "host port 8080 is used twice",
        ),
        (
            [{"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}],
            "/container/portMappings(1)/name",
            "port name 'web' is used twice",
        ),
        ([{"containerPort": 80, "protocol": "sctp"}], "/container/portMappings(0)/protocol", "'sctp' is not one of"),
        ([{"containerPort": "80"}], "/container/portMappings(0)/containerPort", "must be an integer"),
        ([{"containerPort": 80, "labels": {"vip": 1}}], "/container/portMappings(0)/labels/vip", "must be a string"),
    ],
)
def test_bad_port_mappings_are_reported_at_marathons_path(mappings, path, message):
    app = bridge_web_app(healthChecks=[])
    app["container"]["portMappings"] = mappings
    errors = errors_by_path(app)
    assert path in errors, errors
    assert any(message in error for error in errors[path]), errors[path]


def test_zero_host_ports_may_repeat_because_they_are_allocated():
    app = bridge_web_app(healthChecks=[])
    app["container"]["portMappings"] = [{"containerPort": 80, "hostPort": 0}, {"containerPort": 81, "hostPort": 0}]
    assert len(parse_app_definition(app).container.port_mappings) == 2


def test_whole_object_rules_are_reported_at_the_root():
    nothing_to_run = {"/": ["an app needs 'cmd', 'args' or 'container.docker.image': it has nothing to run"]}
    assert errors_by_path({"id": "/a"}) == nothing_to_run
    assert errors_by_path({"id": "/a", "container": {"type": "MESOS"}}) == nothing_to_run
    assert errors_by_path(command_app(args=["x"])) == {"/": ["'cmd' and 'args' cannot be used together"]}
    assert errors_by_path([command_app()]) == {"/": ["must be a JSON object"]}
    assert errors_by_path({"cmd": "x"}) == {"/id": ["is required"]}


def test_port_mappings_in_both_places_are_refused():
    app = bridge_web_app()
    app["container"]["docker"]["portMappings"] = [{"containerPort": 9090}]
    assert "/container/docker/portMappings" in errors_by_path(app)


def test_docker_network_and_networks_are_not_combined():
    app = bridge_web_app()
    app["container"]["docker"]["network"] = "BRIDGE"
    assert errors_by_path(app) == {
        "/container/docker/network": ["cannot be combined with 'networks'; use 'networks' only"]
    }


def test_port_definitions_are_refused_on_a_bridge_network():
    assert "/portDefinitions" in errors_by_path(bridge_web_app(portDefinitions=[{"port": 0}]))


def test_resident_apps_must_not_overcommit_or_be_replaced_when_unreachable():
    app = command_app(
        container={"volumes": [{"containerPath": "data", "persistent": {"size": 10}}]},
        upgradeStrategy={"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5},
        unreachableStrategy={"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0},
    )
    assert set(errors_by_path(app)) == {"/upgradeStrategy/maximumOverCapacity", "/unreachableStrategy"}


def test_every_error_is_collected_in_one_response_grouped_by_path():
    app = {
        "id": "/Bad",
        "cpus": -1,
        "mem": "lots",
        "instances": 1.5,
        "gpus": 2,
        "secrets": {"s": {"source": "x"}},
        "env": {"A": {"secret": "s"}, "B": 2},
        "networks": [{"mode": "container/bridge"}],
        "container": {
            "docker": {"image": "Not A Ref", "privileged": True},
            "portMappings": [
                {"containerPort": 80, "hostPort": 99999, "name": "http"},
                {"containerPort": 81, "name": "http"},
            ],
        },
        "healthChecks": [{"portIndex": 5, "protocol": "HTTP"}],
        "upgradeStrategy": {"minimumHealthCapacity": 2},
        "constraints": [["hostname", "NEAR"]],
    }
    with pytest.raises(MarathonValidationError) as refused:
        parse_app_definition(app)
    details = refused.value.details
    assert {detail["path"] for detail in details} == {
        "/id",
        "/cpus",
        "/mem",
        "/instances",
        "/gpus",
        "/secrets",
        "/env/A",
        "/env/B",
        "/container/docker/image",
        "/container/docker/privileged",
        "/container/portMappings(0)/hostPort",
        "/container/portMappings(1)/name",
        "/healthChecks(0)/portIndex",
        "/upgradeStrategy/minimumHealthCapacity",
        "/constraints(0)",
    }
    assert len(details) == len({detail["path"] for detail in details})
    assert all(detail["errors"] and all(isinstance(e, str) for e in detail["errors"]) for detail in details)
    assert refused.value.as_marathon_json()["message"] == "Object is not valid"
