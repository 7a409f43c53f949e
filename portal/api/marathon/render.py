"""Model rows -> the JSON shapes of Marathon's /v2 API.

Contract: every object built here holds only keys marathon-python 0.13.0 can parse (see
shared/marathon/client-accepted-keys.json: one unknown key makes the client raise), every
timestamp is UTC ``%Y-%m-%dT%H:%M:%S.fffZ``, and every app id is canonical. Reads go through
``portal.selectors`` only; nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from portal import selectors
from portal.choices import InstanceStatus, marathon_task_state
from portal.marathon import AppDefinition
from portal.marathon.app_definition import NetworkMode
from portal.marathon.path_ids import ROOT_GROUP, path_id_segments
from portal.models import App, AppVersion, Deployment, Instance

FAILED_INSTANCE_STATUSES = (InstanceStatus.FAILED, InstanceStatus.LOST)
PLATFORM_NAME = "hypervm-caas"
# Clients gate features on Marathon's version; we implement the 1.10 API subset.
MARATHON_API_VERSION = "1.10.0"
SERVICE_PORT_RANGE = (10000, 20000)


def marathon_timestamp(moment: datetime | str | None) -> str | None:
    """UTC with millisecond precision and a ``Z``: the only form marathon-python parses."""
    if moment is None or moment == "":
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AppEmbeds:
    """Which optional parts an app carries; counts and deployments are always there."""

    tasks: bool = False
    last_task_failure: bool = False

    @classmethod
    def from_query(cls, values: list[str], *, default: AppEmbeds) -> AppEmbeds:
        # Clients send ``app.tasks``; the RAML documents ``apps.tasks`` for the list: accept both.
        wanted = {value.split(".", 1)[-1].lower() for value in values}
        if not wanted:
            return default
        return cls(
            tasks=default.tasks or "tasks" in wanted,
            last_task_failure=default.last_task_failure or "lasttaskfailure" in wanted,
        )


# HyperVM's own task field, sent only when asked for (``embed=tasks.startKind``): marathon-python
# 0.13 raises on any task key Marathon does not send (shared/marathon/client-accepted-keys.json),
# and Marathon ignores embeds it does not know, so a client that never asks sees Marathon's tasks.
START_KIND_EMBED = "tasks.startkind"


def wants_start_kind(values: list[str]) -> bool:
    return any(value.strip().lower() == START_KIND_EMBED for value in values)


LIST_EMBEDS = AppEmbeds()
SINGLE_APP_EMBEDS = AppEmbeds(tasks=True, last_task_failure=True)


class TenantRenderer:
    """Renders one tenant's apps, tasks and deployments, reading each shared thing once."""

    def __init__(self, tenant, *, start_kind: bool = False):
        self.tenant = tenant
        self.start_kind = start_kind
        self._definitions: dict[int, AppDefinition] = {}
        self._running_deployments: dict[int, list[Deployment]] | None = None
        self._counts: dict[int, dict] = {}  # instance counts by app pk, read for a whole list at once

    # ---- apps ---------------------------------------------------------------------------------

    def app(self, app: App, embeds: AppEmbeds = SINGLE_APP_EMBEDS, instances: list[Instance] | None = None) -> dict:
        definition = self.definition(app, app.current_version)
        counts = self._counts.get(app.pk)
        if counts is None:
            counts = selectors.app_counts(app, definition)
        body = definition.to_marathon_json()
        body.update(
            version=app.current_version.version,
            versionInfo={
                "lastScalingAt": marathon_timestamp(app.last_scaling_at or app.created_at),
                "lastConfigChangeAt": marathon_timestamp(app.last_config_change_at or app.created_at),
            },
            tasksStaged=counts["staged"],
            tasksRunning=counts["running"],
            tasksHealthy=counts["healthy"],
            tasksUnhealthy=counts["unhealthy"],
            deployments=[{"id": str(deployment.id)} for deployment in self.running_deployments(app)],
        )
        if embeds.tasks:
            if instances is None:
                instances = list(selectors.instance_list(tenant=self.tenant, app=app))
            body["tasks"] = [self.task(instance) for instance in instances]
        if embeds.last_task_failure:
            failure = self.last_task_failure(app)
            if failure is not None:
                body["lastTaskFailure"] = failure
        return body

    def apps(self, apps: list[App], embeds: AppEmbeds) -> list[dict]:
        instances_by_app: dict[int, list[Instance]] = defaultdict(list)
        definitions = {app.pk: self.definition(app, app.current_version) for app in apps}
        self._counts.update(selectors.app_counts_many(apps, definitions))
        if embeds.tasks:
            for instance in selectors.instance_list(tenant=self.tenant):
                instances_by_app[instance.app_id].append(instance)
        return [self.app(app, embeds, instances=instances_by_app[app.pk]) for app in apps]

    def app_version(self, app: App, version: AppVersion) -> dict:
        """A stored definition as ``GET /versions/{v}`` answers it: no counts, no tasks."""
        return {**self.definition(app, version).to_marathon_json(), "version": version.version}

    def definition(self, app: App, version: AppVersion) -> AppDefinition:
        if version.pk not in self._definitions:
            self._definitions[version.pk] = selectors.app_definition(app, version)
        return self._definitions[version.pk]

    def running_deployments(self, app: App) -> list[Deployment]:
        if self._running_deployments is None:
            self._running_deployments = defaultdict(list)
            for deployment in selectors.deployment_list_running(tenant=self.tenant):
                self._running_deployments[deployment.app_id].append(deployment)
        return self._running_deployments[app.pk]

    def last_task_failure(self, app: App) -> dict | None:
        failed = (
            selectors.instance_list(tenant=self.tenant, app=app, active_only=False)
            .filter(status__in=FAILED_INSTANCE_STATUSES)
            .exclude(status=InstanceStatus.FAILED, exit_code=0)  # TASK_FINISHED is no failure
            .order_by("-updated_at")
            .first()
        )
        if failed is None:
            return None
        return {
            "appId": app.marathon_id,
            "host": failed.host.name if failed.host else "",
            "message": failed.failure_reason,
            "state": marathon_task_state(failed.status, failed.exit_code),
            "taskId": failed.task_id,
            "timestamp": marathon_timestamp(failed.phase_times.get(failed.status) or failed.updated_at),
            "version": failed.version.version,
        }

    # ---- tasks --------------------------------------------------------------------------------

    def task(self, instance: Instance) -> dict:
        definition = self.definition(instance.app, instance.version)
        task_id = instance.task_id
        return {
            "id": task_id,
            "appId": instance.app.marathon_id,
            "host": instance.host.name if instance.host else "",
            "ports": list(instance.host_ports),
            "servicePorts": service_ports(definition),
            "ipAddresses": [{"ipAddress": instance.ip_address, "protocol": "IPv4"}] if instance.ip_address else [],
            "stagedAt": marathon_timestamp(instance.phase_times.get(InstanceStatus.STAGED) or instance.created_at),
            "startedAt": marathon_timestamp(instance.phase_times.get(InstanceStatus.RUNNING)),
            "version": instance.version.version,
            "state": marathon_task_state(instance.status, instance.exit_code),
            "healthCheckResults": health_check_results(instance, task_id) if definition.health_checks else [],
            **local_volumes(instance),
            **({"startKind": instance.start_kind} if self.start_kind else {}),
        }


def local_volumes(instance: Instance) -> dict:
    """Marathon lists a resident task's volumes; other tasks have no such key."""
    volumes = [
        {"containerPath": volume.container_path, "persistenceId": volume.persistence_id}
        for volume in instance.volumes.all()
    ]
    return {"localVolumes": volumes} if volumes else {}


def service_ports(definition: AppDefinition) -> list[int]:
    if definition.network_mode is NetworkMode.HOST:
        return [port_definition.port for port_definition in definition.port_definitions]
    if definition.container is None:
        return []
    return [mapping.service_port for mapping in definition.container.port_mappings]


def health_check_results(instance: Instance, task_id: str) -> list[dict]:
    health = instance.health
    if not health:
        return []
    return [
        {
            "alive": bool(health.get("alive", False)),
            "consecutiveFailures": int(health.get("consecutiveFailures", 0)),
            "firstSuccess": marathon_timestamp(health.get("firstSuccess")),
            "lastSuccess": marathon_timestamp(health.get("lastSuccess")),
            "lastFailure": marathon_timestamp(health.get("lastFailure")),
            "lastFailureCause": health.get("lastFailureCause"),
            "taskId": task_id,
            "instanceId": task_id,
        }
    ]


# ---- deployments ------------------------------------------------------------------------------


def deployment_json(deployment: Deployment) -> dict:
    steps = [
        {"actions": [{"action": action["action"], "app": action["app"]} for action in step.get("actions", [])]}
        for step in deployment.steps
    ]
    current_step = min(max(deployment.current_step, 1), len(steps)) if steps else 0
    current_actions = (
        [{**action, "readinessCheckResults": []} for action in steps[current_step - 1]["actions"]] if steps else []
    )
    return {
        "id": str(deployment.id),
        "version": deployment.version,
        "affectedApps": [deployment.app_marathon_id],
        "affectedPods": [],
        "steps": steps,
        "currentActions": current_actions,
        "currentStep": current_step,
        "totalSteps": len(steps),
    }


def deployment_result(deployment: Deployment) -> dict:
    """The body of every call that starts a deployment."""
    return {"deploymentId": str(deployment.id), "version": deployment.version}


# ---- groups -----------------------------------------------------------------------------------


def group_tree(apps_json: list[dict], group_id: str, *, empty_version: str) -> dict | None:
    """The group ``group_id`` with its apps and subgroups, derived from the app ids (groups
    have no rows of their own here); None when no app lives under it."""
    depth = len(path_id_segments(group_id))
    members = [app for app in apps_json if _is_under(app["id"], group_id)]
    if not members and group_id != ROOT_GROUP:
        return None
    direct_apps = [app for app in members if len(path_id_segments(app["id"])) == depth + 1]
    subgroup_ids = sorted(
        {
            "/" + "/".join(path_id_segments(app["id"])[: depth + 1])
            for app in members
            if len(path_id_segments(app["id"])) > depth + 1
        }
    )
    return {
        "id": group_id,
        "apps": direct_apps,
        "groups": [group_tree(members, subgroup_id, empty_version=empty_version) for subgroup_id in subgroup_ids],
        "pods": [],
        "dependencies": [],
        "version": max((app["version"] for app in members), default=empty_version),
    }


def _is_under(app_id: str, group_id: str) -> bool:
    return group_id == ROOT_GROUP or app_id.startswith(group_id.rstrip("/") + "/")


# ---- info -------------------------------------------------------------------------------------


def info_json(*, tenant, host: str) -> dict:
    hostname, _, port = host.partition(":")
    return {
        "name": PLATFORM_NAME,
        "version": MARATHON_API_VERSION,
        "buildref": PLATFORM_NAME,
        "elected": True,
        "leader": host,
        "frameworkId": f"{PLATFORM_NAME}-{tenant.slug}",
        "marathon_config": {
            "framework_name": PLATFORM_NAME,
            "hostname": hostname,
            "features": [],
            "local_port_min": SERVICE_PORT_RANGE[0],
            "local_port_max": SERVICE_PORT_RANGE[1],
            "mesos_role": None,
            "webui_url": None,
        },
        "zookeeper_config": {},
        "http_config": {"http_port": int(port) if port.isdigit() else None},
    }
