"""to_marathon_json and the stored form round-trip; PUT/PATCH bodies merge onto a stored definition."""

import json

import pytest

from portal.marathon import AppDefinition, MarathonValidationError, merge_app_definition, parse_app_definition
from portal.marathon.app_definition import NetworkMode, PortMapping, UnreachableStrategy, UpgradeStrategy
from portal.marathon.app_parser import AppDefinitionPatch

from .marathon_payloads import BRIDGE_WEB_APP, bridge_web_app, command_app

ROUND_TRIP_APPS = {
    "command": command_app(),
    "args with exec form": {"id": "/a", "args": ["serve", "--port", "80"], "container": {"docker": {"image": "x"}}},
    "bridge web": bridge_web_app(),
    "everything": bridge_web_app(
        # A fixed check port is one of the app's own fixed host ports, inside the platform range (issue 9).
        container={
            **BRIDGE_WEB_APP["container"],
            "portMappings": [
                {"containerPort": 8080, "hostPort": 0, "name": "http"},
                {"containerPort": 8443, "hostPort": 28443, "name": "https"},
            ],
        },
        instances=3,
        cpus=0.5,
        mem=256.5,
        disk=10,
        user="app",
        env={"A": "1"},
        labels={"l": "v"},
        healthChecks=[
            {"protocol": "HTTPS", "path": "/h", "port": 28443, "ignoreHttp1xx": True},
            {"protocol": "MESOS_TCP", "portIndex": 0, "delaySeconds": 3},
            {"protocol": "COMMAND", "command": {"value": "true"}},
        ],
        upgradeStrategy={"minimumHealthCapacity": 0.25, "maximumOverCapacity": 0.5},
        unreachableStrategy={"inactiveAfterSeconds": 30, "expungeAfterSeconds": 60},
        killSelection="OLDEST_FIRST",
        backoffSeconds=2,
        backoffFactor=1.5,
        maxLaunchDelaySeconds=120,
        taskKillGracePeriodSeconds=10,
        constraints=[["hostname", "MAX_PER", "2"], ["hostname", "CLUSTER", "h1"]],
        dependencies=["/db"],
        acceptedResourceRoles=["*"],
        role="shop",
    ),
    "named container network": {
        "id": "/a",
        "container": {
            "type": "MESOS",
            "docker": {"image": "r.io/a@sha256:" + "1" * 64},
            "portMappings": [{"containerPort": 80, "labels": {"vip": "x"}}],
        },
        "networks": [{"mode": "container", "name": "backend", "labels": {"k": "v"}}],
    },
    "host ports": command_app(
        portDefinitions=[{"port": 28080, "name": "http", "labels": {"a": "b"}}, {"port": 0, "protocol": "udp"}],
        requirePorts=True,
    ),
    "resident": command_app(
        container={
            "volumes": [
                {"containerPath": "data", "persistent": {"size": 5}},
                {"containerPath": "/srv/data", "hostPath": "data", "mode": "RO"},
            ]
        }
    ),
}


@pytest.mark.parametrize("app", ROUND_TRIP_APPS.values(), ids=ROUND_TRIP_APPS.keys())
def test_marathon_json_parses_back_to_the_same_definition(app):
    definition = parse_app_definition(app)
    marathon_json = json.loads(json.dumps(definition.to_marathon_json()))
    assert parse_app_definition(marathon_json) == definition


@pytest.mark.parametrize("app", ROUND_TRIP_APPS.values(), ids=ROUND_TRIP_APPS.keys())
def test_the_stored_form_loads_back_to_the_same_definition(app):
    definition = parse_app_definition(app)
    stored = json.loads(json.dumps(definition.to_stored()))
    assert AppDefinition.from_stored(stored) == definition


def test_the_stored_form_is_versioned():
    stored = parse_app_definition(command_app()).to_stored()
    assert stored["format"] == 1
    with pytest.raises(ValueError, match="format"):
        AppDefinition.from_stored({**stored, "format": 99})


def test_marathon_json_is_marathons_canonical_shape():
    marathon_json = parse_app_definition(bridge_web_app()).to_marathon_json()
    assert marathon_json["container"] == {
        "type": "DOCKER",
        "docker": {
            "image": "127.0.0.1:5000/demo/http:1.0",
            "forcePullImage": False,
            "privileged": False,
            "parameters": [],
        },
        "portMappings": [{"containerPort": 8080, "hostPort": 0, "servicePort": 0, "protocol": "tcp", "name": "http"}],
        "volumes": [],
    }
    assert marathon_json["networks"] == [{"mode": "container/bridge"}]
    assert marathon_json["portDefinitions"] == []
    assert (marathon_json["cpus"], marathon_json["mem"], marathon_json["disk"]) == (1, 128, 0)
    assert marathon_json["upgradeStrategy"] == {"minimumHealthCapacity": 1, "maximumOverCapacity": 1}
    assert marathon_json["healthChecks"] == [
        {
            "protocol": "HTTP",
            "path": "/health",
            "portIndex": 0,
            "gracePeriodSeconds": 300,
            "intervalSeconds": 60,
            "timeoutSeconds": 20,
            "maxConsecutiveFailures": 3,
            "delaySeconds": 15,
            "ignoreHttp1xx": False,
        }
    ]


def test_a_partial_parse_validates_only_the_given_fields():
    patch = parse_app_definition({"id": "/ignored", "instances": 3, "tasksRunning": 2}, partial=True)
    assert patch == AppDefinitionPatch(fields={"instances": 3})


def test_a_partial_parse_still_reports_bad_given_fields():
    with pytest.raises(MarathonValidationError) as refused:
        parse_app_definition({"instances": -1, "gpus": 1}, partial=True)
    assert [detail["path"] for detail in refused.value.details] == ["/gpus", "/instances"]


def test_a_scale_patch_changes_only_instances():
    existing = parse_app_definition(bridge_web_app())
    assert merge_app_definition(existing, {"instances": 4}) == AppDefinition(**{**existing.__dict__, "instances": 4})


def test_top_level_fields_are_replaced_wholesale_and_the_url_id_wins():
    existing = parse_app_definition(command_app(env={"A": "1", "B": "2"}))
    merged = merge_app_definition(existing, {"id": "/other", "env": {"C": "3"}})
    assert merged.id == "/sleeper"
    assert dict(merged.env) == {"C": "3"}


def test_a_fetched_app_sent_back_with_a_change_is_an_update():
    existing = parse_app_definition(bridge_web_app())
    fetched = {**existing.to_marathon_json(), "version": "2024-05-01T10:00:00.000Z", "tasksRunning": 1, "cpus": 2}
    assert merge_app_definition(existing, fetched) == AppDefinition(**{**existing.__dict__, "cpus": 2.0})


def test_moving_to_a_bridge_network_derives_the_ports_again():
    existing = parse_app_definition(command_app(container={"docker": {"image": "x"}}))
    merged = merge_app_definition(existing, {"networks": [{"mode": "container/bridge"}]})
    assert merged.network_mode is NetworkMode.CONTAINER_BRIDGE
    assert merged.port_definitions == ()
    assert merged.container.port_mappings == (PortMapping(container_port=0, host_port=0, name="default"),)


def test_adding_a_persistent_volume_derives_the_resident_strategies():
    existing = parse_app_definition(command_app())
    merged = merge_app_definition(
        existing, {"container": {"volumes": [{"containerPath": "d", "persistent": {"size": 1}}]}}
    )
    assert merged.upgrade_strategy == UpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0.0)
    assert merged.unreachable_strategy is None


def test_explicit_values_survive_a_merge():
    existing = parse_app_definition(
        command_app(unreachableStrategy={"inactiveAfterSeconds": 5, "expungeAfterSeconds": 9})
    )
    assert merge_app_definition(existing, {"cpus": 2}).unreachable_strategy == UnreachableStrategy(5, 9)


def test_a_bad_patch_is_reported_at_the_patch_paths():
    existing = parse_app_definition(bridge_web_app())
    with pytest.raises(MarathonValidationError) as refused:
        merge_app_definition(existing, {"healthChecks": [{"portIndex": 3}], "mem": -5})
    assert {detail["path"] for detail in refused.value.details} == {"/healthChecks(0)/portIndex", "/mem"}


def test_a_patch_with_unsupported_fields_or_of_the_wrong_type_is_refused():
    existing = parse_app_definition(command_app())
    with pytest.raises(MarathonValidationError) as unsupported:
        merge_app_definition(existing, {"fetch": [{"uri": "http://x"}], "instances": 2})
    with pytest.raises(MarathonValidationError) as not_an_object:
        merge_app_definition(existing, ["instances", 2])
    assert unsupported.value.details == [
        {
            "path": "/fetch",
            "errors": ["'fetch' is not supported: there is no artifact fetcher; build the files into the image"],
        }
    ]
    assert not_an_object.value.details == [{"path": "/", "errors": ["must be a JSON object"]}]
