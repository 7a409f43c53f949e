"""Which Marathon app fields this platform supports, ignores, or rejects by name.

Contract: every key of an app definition (and of its nested objects) falls in exactly one class:
* supported: parsed, validated, normalised, stored and echoed;
* ignored: read-only response fields that clients send back on update (GET, edit, PUT), and fields
  Marathon itself documents as having no effect; they are accepted and dropped;
* unsupported: rejected with a 422 that names the field and says why, unless the value asks for
  nothing (``null``, or a listed neutral value such as ``gpus: 0`` or ``fetch: []`` that
  marathon-python or a GET-edit-PUT round trip sends) -- those are accepted and dropped;
* anything else is an unknown field, also rejected by name.
Nothing a client asked for is ever silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnsupportedField:
    reason: str
    neutral_values: tuple[object, ...] = ()

    def accepts(self, value: object) -> bool:
        """True when ``value`` requests nothing, so it can be dropped without changing meaning."""
        return value is None or any(
            type(value) is type(neutral) and value == neutral for neutral in self.neutral_values
        )


APP_READ_ONLY_FIELDS = frozenset(
    {
        "version",
        "versionInfo",
        "tasks",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "lastTaskFailure",
        "taskStats",
        "tasksStats",
        "readinessCheckResults",
    }
)
# Marathon documents `residency` as deprecated with no effect; resident behaviour follows volumes.
APP_NO_EFFECT_FIELDS = frozenset({"residency"})
APP_IGNORED_FIELDS = APP_READ_ONLY_FIELDS | APP_NO_EFFECT_FIELDS

APP_SUPPORTED_FIELDS = frozenset(
    {
        "id",
        "cmd",
        "args",
        "user",
        "env",
        "labels",
        "instances",
        "cpus",
        "mem",
        "disk",
        "container",
        "networks",
        "portDefinitions",
        "ports",
        "requirePorts",
        "healthChecks",
        "upgradeStrategy",
        "unreachableStrategy",
        "killSelection",
        "backoffSeconds",
        "backoffFactor",
        "maxLaunchDelaySeconds",
        "taskKillGracePeriodSeconds",
        "constraints",
        "dependencies",
        "acceptedResourceRoles",
        "role",
    }
)

APP_UNSUPPORTED_FIELDS = {
    "gpus": UnsupportedField("HyperVM instances have no GPUs; only 0 is accepted", (0,)),
    "fetch": UnsupportedField("there is no artifact fetcher; build the files into the image", ([],)),
    "uris": UnsupportedField("there is no artifact fetcher; build the files into the image", ([],)),
    "storeUrls": UnsupportedField("removed from Marathon", ([],)),
    "secrets": UnsupportedField("there is no secret store; pass values in env or build them into the image", ({},)),
    "readinessChecks": UnsupportedField(
        "use healthChecks: deployments already wait for new instances to be healthy", ([],)
    ),
    "executor": UnsupportedField("instances run as HyperVMs, not under a Mesos executor", ("", "//cmd")),
    "executorResources": UnsupportedField("instances run as HyperVMs, not under a Mesos executor", ({},)),
    "ipAddress": UnsupportedField("deprecated in Marathon; use networks with mode 'container'"),
    "tty": UnsupportedField("instance consoles are log streams, not terminals", (False,)),
    "resourceLimits": UnsupportedField("a HyperVM's cpus and mem are hard limits; it cannot burst", ({},)),
    "taskRateLimit": UnsupportedField("removed from Marathon"),
    "check": UnsupportedField("use healthChecks"),
}

CONTAINER_SUPPORTED_FIELDS = frozenset({"type", "docker", "portMappings", "volumes"})
CONTAINER_UNSUPPORTED_FIELDS = {
    "appc": UnsupportedField("only Docker/OCI images are supported"),
    "linuxInfo": UnsupportedField("seccomp and IPC settings do not apply to a HyperVM; the VM is the boundary"),
}

DOCKER_SUPPORTED_FIELDS = frozenset({"image", "forcePullImage", "network", "portMappings"})
DOCKER_UNSUPPORTED_FIELDS = {
    "privileged": UnsupportedField("privileged containers are not allowed on a multi-tenant platform", (False,)),
    "parameters": UnsupportedField("there is no docker CLI to pass parameters to", ([],)),
    "credential": UnsupportedField("add the registry's credentials to the tenant's registries instead"),
    "pullConfig": UnsupportedField("add the registry's credentials to the tenant's registries instead"),
}

PORT_MAPPING_SUPPORTED_FIELDS = frozenset({"containerPort", "hostPort", "servicePort", "protocol", "name", "labels"})
PORT_MAPPING_UNSUPPORTED_FIELDS = {
    "networkNames": UnsupportedField("an app joins one network, so every mapping belongs to it", ([],)),
}

PORT_DEFINITION_SUPPORTED_FIELDS = frozenset({"port", "protocol", "name", "labels"})

NETWORK_SUPPORTED_FIELDS = frozenset({"mode", "name", "labels"})

VOLUME_SUPPORTED_FIELDS = frozenset({"containerPath", "mode", "persistent", "hostPath"})
VOLUME_UNSUPPORTED_FIELDS = {
    "external": UnsupportedField("external volume providers are not supported; use persistent volumes"),
}

PERSISTENT_VOLUME_SUPPORTED_FIELDS = frozenset({"size"})
PERSISTENT_VOLUME_UNSUPPORTED_FIELDS = {
    "type": UnsupportedField("volumes are storage-pool volumes; only 'root' is accepted", ("root",)),
    "maxSize": UnsupportedField("volumes have exactly the requested size"),
    "profileName": UnsupportedField("storage profiles are not supported"),
    "constraints": UnsupportedField("volume placement constraints are not supported", ([],)),
}

HEALTH_CHECK_SUPPORTED_FIELDS = frozenset(
    {
        "protocol",
        "path",
        "portIndex",
        "port",
        "command",
        "gracePeriodSeconds",
        "intervalSeconds",
        "timeoutSeconds",
        "maxConsecutiveFailures",
        "delaySeconds",
        "ignoreHttp1xx",
    }
)
HEALTH_CHECK_UNSUPPORTED_FIELDS = {
    "ipProtocol": UnsupportedField("instances have IPv4 addresses only", ("IPv4",)),
}

UPGRADE_STRATEGY_SUPPORTED_FIELDS = frozenset({"minimumHealthCapacity", "maximumOverCapacity"})

# marathon-python also knows the pre-1.4 spellings; they mean the same thing.
UNREACHABLE_STRATEGY_FIELD_ALIASES = {
    "inactiveAfterSeconds": "inactiveAfterSeconds",
    "expungeAfterSeconds": "expungeAfterSeconds",
    "unreachableInactiveAfterSeconds": "inactiveAfterSeconds",
    "unreachableExpungeAfterSeconds": "expungeAfterSeconds",
}
