"""Every supported field, parsed and normalised."""

from portal.marathon import parse_app_definition
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
)

from .marathon_payloads import bridge_web_app, command_app


def test_a_minimal_command_app_gets_marathons_defaults():
    assert parse_app_definition(command_app()) == AppDefinition(
        id="/sleeper",
        cmd="sleep 3600",
        instances=1,
        cpus=1.0,
        memory_mib=128.0,
        disk_mib=0.0,
        networks=(),
        port_definitions=(PortDefinition(port=0, protocol="tcp", name="default"),),
        upgrade_strategy=UpgradeStrategy(minimum_health_capacity=1.0, maximum_over_capacity=1.0),
        unreachable_strategy=UnreachableStrategy(inactive_after_s=0, expunge_after_s=0),
        kill_selection="YOUNGEST_FIRST",
        backoff_s=1,
        backoff_factor=1.15,
        max_launch_delay_s=300,
    )


def test_scalar_fields_are_read_with_units_in_their_names():
    definition = parse_app_definition(
        command_app(
            instances=0,
            cpus=0.25,
            mem=64,
            disk=512.5,
            user="nobody",
            requirePorts=True,
            killSelection="OLDEST_FIRST",
            backoffSeconds=5,
            backoffFactor=2,
            maxLaunchDelaySeconds=60,
            taskKillGracePeriodSeconds=30,
            role="slave_public",
            acceptedResourceRoles=["*"],
        )
    )
    assert (definition.instances, definition.cpus, definition.memory_mib, definition.disk_mib) == (0, 0.25, 64.0, 512.5)
    assert (definition.user, definition.require_ports, definition.kill_selection) == ("nobody", True, "OLDEST_FIRST")
    assert (definition.backoff_s, definition.backoff_factor, definition.max_launch_delay_s) == (5, 2.0, 60)
    assert definition.task_kill_grace_period_s == 30
    assert (definition.role, definition.accepted_resource_roles) == ("slave_public", ("*",))


def test_args_replace_cmd_as_the_exec_form():
    definition = parse_app_definition(
        {"id": "web", "args": ["--port", "8080"], "container": {"docker": {"image": "x"}}}
    )
    assert (definition.cmd, definition.args) == (None, ("--port", "8080"))


def test_relative_ids_resolve_against_the_base_group_and_dependencies_against_the_apps_group():
    definition = parse_app_definition(
        command_app(id="web", dependencies=["db", "/infra/dns", "../shared"]), base_group="/shop/eu"
    )
    assert definition.id == "/shop/eu/web"
    assert definition.dependencies == ("/shop/eu/db", "/infra/dns", "/shop/shared")


def test_env_and_labels_are_string_maps():
    definition = parse_app_definition(command_app(env={"PORT": "8080", "EMPTY": ""}, labels={"team": "shop"}))
    assert dict(definition.env) == {"PORT": "8080", "EMPTY": ""}
    assert dict(definition.labels) == {"team": "shop"}


def test_a_bridge_app_keeps_its_port_mappings_in_the_container():
    definition = parse_app_definition(bridge_web_app())
    assert definition.network_mode is NetworkMode.CONTAINER_BRIDGE
    assert definition.container == Container(
        type="DOCKER",
        docker=DockerImage(image="127.0.0.1:5000/demo/http:1.0", force_pull_image=False),
        port_mappings=(PortMapping(container_port=8080, host_port=0, service_port=0, protocol="tcp", name="http"),),
    )
    assert definition.port_definitions == ()
    assert definition.container.docker.image_reference.registry_host == "127.0.0.1:5000"


def test_legacy_docker_port_mappings_and_network_normalise_to_the_1_5_placement():
    legacy = {
        "id": "/shop/web",
        "container": {
            "type": "DOCKER",
            "docker": {
                "image": "127.0.0.1:5000/demo/http:1.0",
                "network": "BRIDGE",
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "http"}],
                "forcePullImage": False,
                "privileged": False,
            },
        },
        "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0}],
    }
    assert parse_app_definition(legacy) == parse_app_definition(bridge_web_app())


def test_legacy_docker_networks_map_to_network_modes():
    def mode_of(docker_network: str) -> NetworkMode:
        app = {"id": "a", "container": {"docker": {"image": "x", "network": docker_network}}}
        return parse_app_definition(app).network_mode

    assert [mode_of("BRIDGE"), mode_of("USER")] == [NetworkMode.CONTAINER_BRIDGE, NetworkMode.CONTAINER]


def test_a_non_host_network_without_mappings_gets_marathons_default_mapping():
    bridge = parse_app_definition(
        {"id": "a", "container": {"docker": {"image": "x"}}, "networks": [{"mode": "container/bridge"}]}
    )
    named = parse_app_definition(
        {
            "id": "a",
            "container": {"docker": {"image": "x"}},
            "networks": [{"mode": "container", "name": "backend", "labels": {"k": "v"}}],
        }
    )
    assert bridge.container.port_mappings == (PortMapping(container_port=0, host_port=0, name="default"),)
    assert named.container.port_mappings == (PortMapping(container_port=0, host_port=None, name="default"),)
    assert named.networks == (Network(mode=NetworkMode.CONTAINER, name="backend", labels={"k": "v"}),)


def test_an_explicit_empty_mapping_list_means_no_ports():
    app = bridge_web_app(healthChecks=[])
    app["container"]["portMappings"] = []
    assert parse_app_definition(app).container.port_mappings == ()


def test_a_network_without_mode_is_a_container_network():
    app = {"id": "a", "container": {"docker": {"image": "x"}}, "networks": [{"name": "backend"}]}
    assert parse_app_definition(app).network_mode is NetworkMode.CONTAINER


def test_port_mappings_keep_every_field():
    app = bridge_web_app(healthChecks=[])
    app["container"]["portMappings"] = [
        {
            "containerPort": 53,
            "hostPort": 25353,
            "servicePort": 10053,
            "protocol": "udp,tcp",
            "name": "dns",
            "labels": {"vip": "10.0.0.1:53"},
        }
    ]
    assert parse_app_definition(app).container.port_mappings == (
        PortMapping(
            container_port=53,
            host_port=25353,
            service_port=10053,
            protocol="udp,tcp",
            name="dns",
            labels={"vip": "10.0.0.1:53"},
        ),
    )


def test_port_definitions_and_the_deprecated_ports_alias():
    with_definitions = parse_app_definition(
        command_app(portDefinitions=[{"port": 8080, "protocol": "udp", "name": "api", "labels": {"a": "b"}}, {}])
    )
    with_ports = parse_app_definition(command_app(ports=[8080, 0]))
    assert with_definitions.port_definitions == (
        PortDefinition(port=8080, protocol="udp", name="api", labels={"a": "b"}),
        PortDefinition(port=0, protocol="tcp"),
    )
    assert with_ports.port_definitions == (PortDefinition(port=8080), PortDefinition(port=0))
    assert parse_app_definition(command_app(portDefinitions=[])).port_definitions == ()


def test_health_checks_get_defaults_per_protocol():
    app = bridge_web_app(
        healthChecks=[
            {},
            # A fixed check port must be one of the app's own fixed host ports (issue 9).
            {"protocol": "HTTPS", "path": "/ready", "port": 28443, "ignoreHttp1xx": True},
            {
                "protocol": "TCP",
                "portIndex": 0,
                "gracePeriodSeconds": 5,
                "intervalSeconds": 2,
                "timeoutSeconds": 1,
                "maxConsecutiveFailures": 0,
                "delaySeconds": 0,
            },
            {"protocol": "COMMAND", "command": {"value": "test -f /tmp/ok"}},
            {"protocol": "MESOS_HTTP", "ipProtocol": "IPv4"},
        ]
    )
    app["container"]["portMappings"].append({"containerPort": 8443, "hostPort": 28443, "name": "https"})
    definition = parse_app_definition(app)
    assert definition.health_checks == (
        HealthCheck(protocol="HTTP", path="/", port_index=0),
        HealthCheck(protocol="HTTPS", path="/ready", port=28443, ignore_http1xx=True),
        HealthCheck(
            protocol="TCP",
            port_index=0,
            grace_period_s=5,
            interval_s=2,
            timeout_s=1,
            max_consecutive_failures=0,
            delay_s=0,
        ),
        HealthCheck(protocol="COMMAND", command="test -f /tmp/ok"),
        HealthCheck(protocol="MESOS_HTTP", path="/", port_index=0),
    )
    assert [check.probe for check in definition.health_checks] == [
        HealthCheckProbe.HTTP,
        HealthCheckProbe.HTTPS,
        HealthCheckProbe.TCP,
        HealthCheckProbe.COMMAND,
        HealthCheckProbe.HTTP,
    ]


def test_upgrade_and_unreachable_strategies():
    definition = parse_app_definition(
        command_app(
            upgradeStrategy={"minimumHealthCapacity": 0.5},
            unreachableStrategy={"inactiveAfterSeconds": 60, "expungeAfterSeconds": 120},
        )
    )
    assert definition.upgrade_strategy == UpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=1.0)
    assert definition.unreachable_strategy == UnreachableStrategy(inactive_after_s=60, expunge_after_s=120)
    assert parse_app_definition(command_app(unreachableStrategy="disabled")).unreachable_strategy is None


def test_marathon_python_spells_unreachable_strategy_fields_the_old_way_too():
    definition = parse_app_definition(
        command_app(unreachableStrategy={"unreachableInactiveAfterSeconds": 10, "unreachableExpungeAfterSeconds": 20})
    )
    assert definition.unreachable_strategy == UnreachableStrategy(inactive_after_s=10, expunge_after_s=20)


def test_hostname_constraints():
    definition = parse_app_definition(
        command_app(
            constraints=[
                ["hostname", "UNIQUE"],
                ["hostname", "CLUSTER", "host-1"],
                ["hostname", "MAX_PER", 2],
                ["@hostname", "CLUSTER"],
            ]
        )
    )
    assert definition.constraints == (
        Constraint("hostname", "UNIQUE"),
        Constraint("hostname", "CLUSTER", "host-1"),
        Constraint("hostname", "MAX_PER", "2"),
        Constraint("@hostname", "CLUSTER"),
    )


def test_persistent_volumes_make_an_app_resident_with_marathons_resident_defaults():
    definition = parse_app_definition(
        command_app(
            container={
                "type": "MESOS",
                "volumes": [
                    {"containerPath": "pgdata", "mode": "RW", "persistent": {"size": 1024, "type": "root"}},
                    {"containerPath": "/var/lib/postgresql/data", "hostPath": "pgdata", "mode": "RW"},
                ],
            }
        )
    )
    assert definition.container.volumes == (
        Volume(container_path="pgdata", mode="RW", persistent_size_mib=1024),
        Volume(container_path="/var/lib/postgresql/data", mode="RW", host_path="pgdata"),
    )
    assert definition.is_resident
    assert definition.upgrade_strategy == UpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0.0)
    assert definition.unreachable_strategy is None


def test_ignored_fields_are_dropped_without_error():
    read_back = command_app(
        version="2024-01-01T00:00:00.000Z",
        versionInfo={"lastScalingAt": "2024-01-01T00:00:00.000Z"},
        tasks=[{"id": "t1"}],
        tasksRunning=1,
        tasksStaged=0,
        tasksHealthy=1,
        tasksUnhealthy=0,
        deployments=[{"id": "d1"}],
        lastTaskFailure={"message": "x"},
        taskStats={},
        readinessCheckResults=[],
        residency={"taskLostBehavior": "WAIT_FOREVER"},
    )
    assert parse_app_definition(read_back) == parse_app_definition(command_app())


def test_neutral_values_of_unsupported_fields_are_accepted():
    neutral = command_app(
        gpus=0,
        fetch=[],
        uris=[],
        storeUrls=[],
        secrets={},
        readinessChecks=[],
        executor="//cmd",
        tty=False,
        resourceLimits={},
        ipAddress=None,
        taskRateLimit=None,
        check=None,
    )
    assert parse_app_definition(neutral) == parse_app_definition(command_app())


def test_port_names_follow_the_network_mode():
    assert parse_app_definition(bridge_web_app()).port_names == ("http",)
    assert parse_app_definition(command_app()).port_names == ("default",)
