"""`networks` in app definitions: which modes a VM platform accepts, and how they normalise."""

import pytest

from portal.marathon import AppDefinition, parse_app_definition
from portal.marathon.app_definition import Network, NetworkMode, PortMapping
from portal.marathon.app_parser import merge_app_definition

from .marathon_payloads import command_app, errors_by_path

IMAGE_CONTAINER = {"docker": {"image": "127.0.0.1:5000/demo/hello:latest"}}


def test_a_named_container_network_is_kept_with_its_name():
    definition = parse_app_definition(
        command_app(container=IMAGE_CONTAINER, networks=[{"mode": "container", "name": "backend"}])
    )
    assert definition.networks == (Network(mode=NetworkMode.CONTAINER, name="backend"),)
    assert definition.to_marathon_json()["networks"] == [{"mode": "container", "name": "backend"}]


def test_container_bridge_keeps_published_port_mappings():
    definition = parse_app_definition(
        command_app(
            container={**IMAGE_CONTAINER, "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
            networks=[{"mode": "container/bridge"}],
        )
    )
    assert (definition.network_mode, definition.container.port_mappings) == (
        NetworkMode.CONTAINER_BRIDGE,
        (PortMapping(container_port=8080, host_port=0),),
    )


def test_an_absent_networks_field_keeps_marathons_port_definitions_and_renders_no_network():
    definition = parse_app_definition(command_app(container=IMAGE_CONTAINER))
    rendered = definition.to_marathon_json()
    assert (definition.networks, definition.network_mode, rendered["networks"], rendered["portDefinitions"]) == (
        (),
        NetworkMode.HOST,
        [],
        [{"port": 0, "protocol": "tcp", "name": "default"}],
    )
    assert parse_app_definition(rendered) == definition


@pytest.mark.parametrize(
    ("networks", "path"),
    [
        ([{"mode": "host"}], "/networks(0)/mode"),
        ([{"mode": "host", "labels": {"a": "b"}}], "/networks(0)/mode"),
    ],
)
def test_host_mode_is_refused_with_its_path(networks, path):
    errors = errors_by_path(command_app(container=IMAGE_CONTAINER, networks=networks))
    assert "mode 'host' is not supported" in " ".join(errors[path])


def test_legacy_docker_host_network_is_refused_with_its_path():
    app = {"id": "a", "container": {"docker": {"image": "x", "network": "HOST"}}}
    assert "mode 'host' is not supported" in " ".join(errors_by_path(app)["/container/docker/network"])


def test_a_version_stored_with_host_mode_renders_without_it_and_merges_cleanly():
    """Definitions stored before host mode was refused carry it; a PUT of a changed env must not 422."""
    old = parse_app_definition(command_app(container=IMAGE_CONTAINER))
    stored_with_host = AppDefinition.from_stored(
        {
            **old.to_stored(),
            "app": {**old.to_stored()["app"], "networks": [{"mode": "host", "name": None, "labels": {}}]},
        }
    )
    assert stored_with_host.to_marathon_json()["networks"] == []
    merged = merge_app_definition(stored_with_host, {"env": {"A": "1"}})
    assert (merged.networks, dict(merged.env)) == ((), {"A": "1"})


def test_an_invalid_network_name_is_refused():
    errors = errors_by_path(
        command_app(container=IMAGE_CONTAINER, networks=[{"mode": "container", "name": "Bad Name"}])
    )
    assert list(errors) == ["/networks(0)/name"]
