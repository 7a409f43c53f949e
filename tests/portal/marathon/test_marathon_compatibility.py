"""Marathon's own example payloads and what the real marathon-python 0.13.0 client sends and reads.

The examples in marathon_examples/ are copied unchanged from Marathon's RAML (docs/docs/rest-api/public/api/v2/examples,
Apache-2.0, see LICENSE-marathon.txt there) so the tests do not depend on files outside the repository.
"""

import collections
import collections.abc
import json
from pathlib import Path

import pytest
from marathon.models import MarathonApp, MarathonHealthCheck
from marathon.models.app import MarathonUpgradeStrategy, PortDefinition
from marathon.models.constraint import MarathonConstraint
from marathon.models.container import (
    MarathonContainer,
    MarathonContainerPortMapping,
    MarathonContainerVolume,
    MarathonDockerContainer,
)

from portal.marathon import parse_app_definition
from portal.marathon.app_definition import Constraint, NetworkMode, PortMapping, Volume
from portal.marathon.app_parser import AppDefinitionPatch

from .marathon_payloads import bridge_web_app, errors_by_path

EXAMPLES = Path(__file__).parent / "marathon_examples"


@pytest.fixture(autouse=True)
def marathon_python_on_python_3_10_plus(monkeypatch):
    # marathon/util.py still uses collections.Iterable (removed in 3.10) when it serialises nested objects.
    monkeypatch.setattr(collections, "Iterable", collections.abc.Iterable, raising=False)


def load_example(name: str) -> object:
    return json.loads((EXAMPLES / name).read_text())


def client_request_body(app: MarathonApp, app_id: str) -> dict:
    """What MarathonClient.create_app() sends for ``app``."""
    app.id = app_id
    return json.loads(app.to_json(minimal=True))


def test_marathons_app_example_fails_only_on_what_this_platform_does_not_support():
    assert sorted(errors_by_path(load_example("app.json"))) == [
        "/",  # it gives both cmd and args, which Marathon's own validation refuses too
        "/constraints(0)",  # LIKE
        "/container/docker/image",  # "mesosphere:marathon/latest" is not a valid image reference
        "/container/docker/parameters",
        "/container/volumes(0)/hostPath",
        "/env/PASSWORD",  # a secret reference
        "/fetch",
        "/ipAddress",
        "/portDefinitions",  # beside docker.network BRIDGE
        "/readinessChecks",
        "/secrets",
        "/tty",
    ]


def test_marathons_check_example_fails_only_on_the_unsupported_check_field():
    assert errors_by_path(load_example("app-check-http-example.json")) == {
        "/check": ["'check' is not supported: use healthChecks"]
    }


def test_marathons_create_many_example_parses():
    definitions = [parse_app_definition(app) for app in load_example("apps_create.json")]
    assert [definition.id for definition in definitions] == ["/test/sleep60", "/test/sleep120"]
    assert definitions[0].dependencies == ("/test/sleep120", "/other/namespace/or/app")
    assert (definitions[0].cpus, definitions[0].memory_mib, definitions[0].instances) == (0.3, 9.0, 2)


@pytest.mark.parametrize("patch_example", [load_example("app_patch.json"), *load_example("apps_patch.json")])
def test_marathons_patch_examples_are_valid_patches(patch_example):
    patch = parse_app_definition(patch_example, partial=True)
    assert isinstance(patch, AppDefinitionPatch)
    assert "id" not in patch.fields


def test_the_client_itests_trivial_app_parses():
    body = client_request_body(MarathonApp(cmd="sleep 3600", mem=16, cpus=0.1, instances=5), "/trivial-app")
    definition = parse_app_definition(body)
    assert (definition.id, definition.cmd, definition.memory_mib, definition.cpus, definition.instances) == (
        "/trivial-app",
        "sleep 3600",
        16.0,
        0.1,
        5,
    )


def test_the_client_itests_complex_app_fails_only_on_host_volume_and_uris():
    app = MarathonApp(
        cmd="python3 -m http.server 8080",
        container=MarathonContainer(
            docker=MarathonDockerContainer(
                image="python:3",
                network="BRIDGE",
                port_mappings=[MarathonContainerPortMapping(container_port=8080, host_port=0, protocol="tcp")],
            ),
            volumes=[MarathonContainerVolume(container_path="/etc/a", host_path="/var/data/a", mode="RO")],
        ),
        health_checks=[
            MarathonHealthCheck(
                protocol="HTTP",
                path="/",
                port_index=0,
                grace_period_seconds=5,
                interval_seconds=20,
                max_consecutive_failures=3,
            )
        ],
        backoff_factor=1.15,
        backoff_seconds=1,
        max_launch_delay_seconds=3600,
        uris=["https://example.com/a.tgz"],
        mem=32,
        cpus=0.1,
        instances=1,
    )
    assert sorted(errors_by_path(client_request_body(app, "/complex-app"))) == [
        "/container/volumes(0)/hostPath",
        "/uris",
    ]


def test_a_typical_client_app_parses_and_normalises():
    app = MarathonApp(
        cpus=0.5,
        mem=256,
        disk=100,
        instances=2,
        gpus=0,
        require_ports=False,
        env={"GREETING": "hello"},
        labels={"team": "shop"},
        container=MarathonContainer(
            docker=MarathonDockerContainer(image="127.0.0.1:5000/demo/http:1.0", force_pull_image=True),
            port_mappings=[MarathonContainerPortMapping(name="http", container_port=8080, host_port=0)],
            volumes=[MarathonContainerVolume(container_path="data", persistent={"size": 64})],
        ),
        networks=[{"mode": "container/bridge"}],
        health_checks=[
            MarathonHealthCheck(protocol="HTTP", path="/", port_index=0, timeout_seconds=5, interval_seconds=10)
        ],
        constraints=[MarathonConstraint("hostname", "MAX_PER", 1)],
        upgrade_strategy=MarathonUpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0),
        unreachable_strategy="disabled",
        kill_selection="OLDEST_FIRST",
    )
    definition = parse_app_definition(client_request_body(app, "shop/web"))
    assert definition.id == "/shop/web"
    assert definition.network_mode is NetworkMode.CONTAINER_BRIDGE
    assert definition.container.docker.force_pull_image
    assert definition.container.port_mappings == (PortMapping(name="http", container_port=8080, host_port=0),)
    assert definition.container.volumes == (Volume(container_path="data", mode="RW", persistent_size_mib=64),)
    assert definition.constraints == (Constraint("hostname", "MAX_PER", "1"),)
    assert definition.is_resident and definition.unreachable_strategy is None


def test_a_client_host_networking_app_with_port_definitions_parses():
    app = MarathonApp(
        cmd="python3 -m http.server $PORT0",
        port_definitions=[PortDefinition(port=0, name="http")],
        health_checks=[MarathonHealthCheck(protocol="TCP", port_index=0)],
    )
    definition = parse_app_definition(client_request_body(app, "/http"))
    assert definition.port_names == ("http",)


def test_the_client_reads_our_app_json_and_sends_it_back_unchanged():
    definition = parse_app_definition(bridge_web_app(env={"A": "1"}, constraints=[["hostname", "UNIQUE"]]))
    response_app = {
        **definition.to_marathon_json(),
        "version": "2024-05-01T10:00:00.000Z",
        "versionInfo": {"lastScalingAt": "2024-05-01T10:00:00.000Z", "lastConfigChangeAt": "2024-05-01T10:00:00.000Z"},
        "tasksStaged": 0,
        "tasksRunning": 1,
        "tasksHealthy": 1,
        "tasksUnhealthy": 0,
        "deployments": [{"id": "5ed4c0c5-9ff8-4a6f-a0cd-f57f59a34b43"}],
    }
    fetched = MarathonApp.from_json(response_app)  # raises TypeError on any key the client does not know
    fetched.version = None  # what update_app() does
    assert parse_app_definition(json.loads(fetched.to_json(minimal=True))) == definition


def test_a_resident_app_survives_the_client_round_trip():
    definition = parse_app_definition(
        {
            "id": "/db",
            "cmd": "postgres",
            "container": {
                "type": "MESOS",
                "volumes": [
                    {"containerPath": "pgdata", "mode": "RW", "persistent": {"size": 512}},
                    {"containerPath": "/var/lib/postgresql", "hostPath": "pgdata", "mode": "RW"},
                ],
            },
        }
    )
    fetched = MarathonApp.from_json(definition.to_marathon_json())
    assert parse_app_definition(json.loads(fetched.to_json(minimal=True))) == definition
