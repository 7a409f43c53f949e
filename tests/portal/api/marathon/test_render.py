"""The JSON shapes: only keys marathon-python 0.13.0 parses, its timestamp format, and its own
model classes build from them (pitfall 1 and 4 of API-NOTES §10)."""

import json

import pytest
from marathon.models import MarathonApp, MarathonDeployment, MarathonInfo, MarathonTask
from marathon.models.group import MarathonGroup

from portal.api.marathon.render import TenantRenderer
from portal.models import Event, Instance
from portal.services.instances import instance_transition
from tests.support.portal_fixtures import compute_host_create

from .shapes import TIMESTAMP, accepted_keys, app_unknown_keys, task_unknown_keys, unknown_keys

pytestmark = pytest.mark.django_db

HEALTH_CHECKED_BRIDGE_APP = {
    "networks": [{"mode": "container/bridge"}],
    "container": {
        "type": "DOCKER",
        "docker": {"image": "demo/hello:latest"},
        "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "http", "servicePort": 10001}],
    },
    "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0}],
    "env": {"GREETING": "hi"},
    "labels": {"team": "web"},
}


@pytest.fixture
def host():
    return compute_host_create("host-a", vcpus=4, memory_mib=8192)


@pytest.fixture
def lived_app(make_app, host):
    """An app whose instances went through the phases: one healthy, one failed."""
    app, _ = make_app("/shop/web", instances=2, **HEALTH_CHECKED_BRIDGE_APP)
    healthy, failed = app.instances.order_by("created_at")
    Instance.objects.filter(pk=healthy.pk).update(
        host=host,
        status="healthy",
        host_ports=[20001],
        ip_address="10.88.0.5",
        phase_times={**healthy.phase_times, "running": "2026-11-25T21:00:01.250000+00:00"},
        health={"alive": True, "consecutiveFailures": 0, "firstSuccess": "2026-11-25T21:00:03.5+00:00"},
    )
    Instance.objects.filter(pk=failed.pk).update(
        host=host,
        status="failed",
        failure_reason="exited with code 3",
        phase_times={**failed.phase_times, "failed": "2026-11-25T21:00:02.000001+00:00"},
    )
    return app


def test_app_has_only_client_keys_and_parses(api, lived_app):
    app = json.loads(api.get("/v2/apps/shop/web").content)["app"]
    assert app_unknown_keys(app) == {}
    parsed = MarathonApp.from_json(app)
    assert (parsed.id, parsed.instances, parsed.tasks_running, parsed.tasks_healthy) == ("/shop/web", 2, 1, 1)
    assert parsed.tasks[0].host == "host-a" and parsed.tasks[0].ports == [20001]
    assert parsed.last_task_failure.message == "exited with code 3"
    assert app["lastTaskFailure"]["state"] == "TASK_FAILED"
    assert app["deployments"] == [{"id": str(lived_app.deployments.get().id)}]


def test_timestamps_have_milliseconds_and_z(api, lived_app):
    app = json.loads(api.get("/v2/apps/shop/web").content)["app"]
    (task,) = app["tasks"]
    stamps = [
        app["version"],
        *app["versionInfo"].values(),
        app["lastTaskFailure"]["timestamp"],
        task["stagedAt"],
        task["startedAt"],
        task["healthCheckResults"][0]["firstSuccess"],
    ]
    assert all(TIMESTAMP.match(stamp) for stamp in stamps), stamps
    assert task["startedAt"] == "2026-11-25T21:00:01.250Z"
    assert app["lastTaskFailure"]["timestamp"] == "2026-11-25T21:00:02.000Z"


def test_task_shape(api, lived_app):
    (task,) = json.loads(api.get("/v2/apps/shop/web/tasks").content)["tasks"]
    assert task_unknown_keys(task) == {}
    assert task["state"] == "TASK_RUNNING"
    assert task["servicePorts"] == [10001]
    assert task["ipAddresses"] == [{"ipAddress": "10.88.0.5", "protocol": "IPv4"}]
    assert task["id"].startswith("shop_web.instance-")
    assert task["healthCheckResults"][0]["alive"] is True
    parsed = MarathonTask.from_json(task)
    assert parsed.app_id == "/shop/web" and parsed.started_at.microsecond == 250000


def test_staged_task_without_host(api, make_app):
    make_app("/web")
    (task,) = json.loads(api.get("/v2/tasks").content)["tasks"]
    assert (task["state"], task["host"], task["startedAt"], task["ports"]) == ("TASK_STAGING", "", None, [])
    assert task_unknown_keys(task) == {}
    MarathonTask.from_json(task)


def test_app_list_embeds(api, lived_app):
    plain = json.loads(api.get("/v2/apps").content)["apps"][0]
    embedded = json.loads(api.get("/v2/apps?embed=apps.tasks&embed=app.lastTaskFailure").content)["apps"][0]
    assert "tasks" not in plain and "lastTaskFailure" not in plain
    assert plain["tasksHealthy"] == 1 and plain["deployments"]
    assert len(embedded["tasks"]) == 1 and embedded["lastTaskFailure"]["taskId"].startswith("shop_web.instance-")
    assert app_unknown_keys(embedded) == {}


def test_deployment_shape(api, lived_app):
    (deployment,) = json.loads(api.get("/v2/deployments").content)
    assert unknown_keys("deployment", deployment) == set()
    assert deployment["affectedApps"] == ["/shop/web"]
    assert [step["actions"][0]["action"] for step in deployment["steps"]] == ["StartApplication", "ScaleApplication"]
    assert deployment["currentActions"] == [
        {"action": "StartApplication", "app": "/shop/web", "readinessCheckResults": []}
    ]
    assert (deployment["currentStep"], deployment["totalSteps"]) == (1, 2)
    assert MarathonDeployment.from_json(deployment).affected_apps == ["/shop/web"]


def test_info_shape(api):
    info = json.loads(api.get("/v2/info").content)
    assert unknown_keys("info", info) == set()
    for section in ("marathon_config", "zookeeper_config", "http_config"):
        assert isinstance(info[section], dict)
        assert set(info[section]) <= accepted_keys(f"info.{section}")
    assert MarathonInfo.from_json(info).elected is True


def test_group_tree_from_app_ids(api, make_app):
    for app_id in ("/top", "/shop/web", "/shop/api", "/shop/backend/db"):
        make_app(app_id, instances=0)
    root = json.loads(api.get("/v2/groups").content)
    assert unknown_keys("group", root) == set()
    assert (root["id"], [app["id"] for app in root["apps"]]) == ("/", ["/top"])
    (shop,) = root["groups"]
    assert (shop["id"], sorted(app["id"] for app in shop["apps"])) == ("/shop", ["/shop/api", "/shop/web"])
    assert [(group["id"], [app["id"] for app in group["apps"]]) for group in shop["groups"]] == [
        ("/shop/backend", ["/shop/backend/db"])
    ]
    assert json.loads(api.get("/v2/groups//shop/backend").content)["id"] == "/shop/backend"
    parsed = MarathonGroup.from_json(root)
    assert parsed.groups[0].groups[0].apps[0].id == "/shop/backend/db"


def test_empty_root_group(api):
    root = json.loads(api.get("/v2/groups").content)
    assert (root["id"], root["apps"], root["groups"], root["pods"]) == ("/", [], [], [])
    assert TIMESTAMP.match(root["version"])


def test_version_of_an_app_is_its_definition(api, lived_app):
    version = lived_app.current_version.version
    body = json.loads(api.get(f"/v2/apps/shop/web/versions/{version}").content)
    assert body["version"] == version and body["id"] == "/shop/web"
    assert "tasks" not in body and "tasksRunning" not in body
    assert app_unknown_keys(body) == {}
    MarathonApp.from_json(body)


@pytest.mark.parametrize(
    ("path", "exit_code", "expected", "reported_failure"),
    [
        (("stopping", "stopped"), 143, "TASK_KILLED", None),  # stopped by the platform, whatever the app's code
        (("failed",), 0, "TASK_FINISHED", None),  # the app exited 0 by itself: no failure
        (("failed",), 3, "TASK_FAILED", "TASK_FAILED"),
        (("lost",), None, "TASK_LOST", "TASK_LOST"),
    ],
)
def test_events_and_v2_agree_on_how_a_task_ended(api, make_app, host, path, exit_code, expected, reported_failure):
    app, _ = make_app("/ends", instances=1)
    instance = app.instances.get()
    Instance.objects.filter(pk=instance.pk).update(host=host, status="running")
    for status in path:
        instance_transition(instance_id=instance.pk, to=status, exit_code=exit_code, failure_reason="it ended")

    event = Event.objects.filter(instance=instance, kind="status_update_event").last()
    task = TenantRenderer(app.tenant).task(Instance.objects.get(pk=instance.pk))
    assert event.data["taskStatus"] == task["state"] == expected
    failure = json.loads(api.get("/v2/apps/ends").content)["app"].get("lastTaskFailure") or {}
    assert failure.get("state") == reported_failure
