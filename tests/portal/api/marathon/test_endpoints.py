"""Each /v2 endpoint's success answer and what it stored (API-NOTES §3, §4.3, §6)."""

import json

import pytest

from portal.choices import DeploymentKind, DeploymentStatus
from portal.models import App, Deployment, Instance

from .conftest import app_json
from .shapes import task_unknown_keys

pytestmark = pytest.mark.django_db


def send(api, method, path, body):
    return getattr(api, method)(path, json.dumps(body), content_type="application/json")


def finish_deployments():
    """Stand-in for the engine: the app is no longer locked."""
    Deployment.objects.filter(status=DeploymentStatus.RUNNING).update(status=DeploymentStatus.SUCCEEDED)


def test_post_creates_the_app_201_with_headers(api):
    response = send(api, "post", "/v2/apps", app_json("/shop/web", instances=2))
    assert response.status_code == 201
    body = json.loads(response.content)
    deployment = Deployment.objects.get()
    assert response["Location"] == "/shop/web"
    assert response["Marathon-Deployment-Id"] == str(deployment.id)
    assert body["deployments"] == [{"id": str(deployment.id)}]
    assert (body["id"], body["instances"], body["tasksRunning"], body["tasksStaged"]) == ("/shop/web", 2, 0, 2)
    assert body["version"] == App.objects.get().current_version.version
    assert Instance.objects.count() == 2


def test_relative_id_is_made_absolute(api):
    assert json.loads(send(api, "post", "/v2/apps", app_json("web")).content)["id"] == "/web"


def test_list_filters(api, make_app):
    make_app("/shop/web", cmd="python -m http.server", labels={"team": "shop"})
    make_app("/ops/db", cmd="postgres", labels={"team": "ops"})

    def ids(query):
        return [app["id"] for app in json.loads(api.get(f"/v2/apps?{query}").content)["apps"]]

    assert ids("") == ["/ops/db", "/shop/web"]
    assert ids("id=SHOP") == ["/shop/web"]
    assert ids("cmd=postgres") == ["/ops/db"]
    assert ids("label=team==ops") == ["/ops/db"]
    assert ids("label=team") == ["/ops/db", "/shop/web"]


def test_put_scale_only_is_a_scale_deployment(api, make_app):
    app, _ = make_app("/web")
    finish_deployments()
    response = send(api, "put", "/v2/apps//web", {"instances": 3})
    assert response.status_code == 200
    body = json.loads(response.content)
    deployment = Deployment.objects.get(pk=body["deploymentId"])
    assert response["Marathon-Deployment-Id"] == body["deploymentId"]
    assert deployment.kind == DeploymentKind.SCALE
    app.refresh_from_db()
    assert body["version"] == app.current_version.version == deployment.version
    assert json.loads(api.get("/v2/apps/web").content)["app"]["instances"] == 3


def test_put_partial_update_keeps_omitted_fields(api, make_app):
    make_app("/web", env={"A": "1"}, labels={"team": "x"})
    finish_deployments()
    fetched = json.loads(api.get("/v2/apps/web").content)["app"]
    fetched["env"] = {"B": "2"}  # GET, edit, PUT back everything, read-only fields included
    response = send(api, "put", "/v2/apps/web", {key: value for key, value in fetched.items() if key != "version"})
    assert response.status_code == 200, response.content
    assert Deployment.objects.get(pk=json.loads(response.content)["deploymentId"]).kind == DeploymentKind.RESTART
    app = json.loads(api.get("/v2/apps/web").content)["app"]
    assert (app["env"], app["labels"], app["cmd"]) == ({"B": "2"}, {"team": "x"}, "sleep 3600")


def test_put_without_partial_update_reapplies_defaults(api, make_app):
    make_app("/web", labels={"team": "x"})
    finish_deployments()
    body = app_json("/web")
    del body["cpus"]
    assert send(api, "put", "/v2/apps/web?partialUpdate=FALSE", body).status_code == 200
    app = json.loads(api.get("/v2/apps/web").content)["app"]
    assert (app["labels"], app["cpus"]) == ({}, 1)


def test_put_creates_a_missing_app_201(api):
    response = send(api, "put", "/v2/apps/shop/new", app_json("/ignored/by/url"))
    assert response.status_code == 201
    assert response["Location"] == "/shop/new"
    assert set(json.loads(response.content)) == {"deploymentId", "version"}
    assert App.objects.get().marathon_id == "/shop/new"


def test_put_version_rolls_back(api, make_app):
    app, _ = make_app("/web", env={"V": "1"})
    first_version = app.current_version.version
    finish_deployments()
    send(api, "put", "/v2/apps/web", {"env": {"V": "2"}})
    finish_deployments()
    response = send(api, "put", "/v2/apps/web", {"version": first_version, "id": "/web"})
    assert response.status_code == 200
    current = json.loads(api.get("/v2/apps/web").content)["app"]
    assert current["env"] == {"V": "1"} and current["version"] not in (first_version,)
    versions = json.loads(api.get("/v2/apps/web/versions").content)["versions"]
    assert len(versions) == 3 and versions[-1] == first_version and versions[0] == current["version"]


def test_patch_is_a_partial_update(api, make_app):
    make_app("/web", labels={"team": "x"})
    finish_deployments()
    assert send(api, "patch", "/v2/apps/web", {"labels": {"team": "y"}}).status_code == 200
    assert json.loads(api.get("/v2/apps/web").content)["app"]["labels"] == {"team": "y"}


def test_force_overrides_the_lock(api, make_app):
    _, first = make_app("/web")
    assert send(api, "put", "/v2/apps/web?force=True", {"instances": 2}).status_code == 200
    first.refresh_from_db()
    assert first.status == DeploymentStatus.CANCELLED


def test_put_app_list_creates_and_updates(api, make_app):
    make_app("/web")
    finish_deployments()
    response = send(api, "put", "/v2/apps", [{"id": "/web", "instances": 2}, app_json("/api")])
    assert response.status_code == 200, response.content
    assert sorted(App.objects.values_list("marathon_id", flat=True)) == ["/api", "/web"]
    assert json.loads(api.get("/v2/apps/web").content)["app"]["instances"] == 2


def test_put_app_list_with_one_bad_app_changes_nothing(api, make_app):
    make_app("/web")
    finish_deployments()
    response = send(api, "put", "/v2/apps", [{"id": "/web", "instances": 2}, app_json("/api", mem=-1)])
    assert response.status_code == 422
    assert [detail["path"] for detail in json.loads(response.content)["details"]] == ["/(1)/mem"]
    assert list(App.objects.values_list("marathon_id", flat=True)) == ["/web"]
    assert json.loads(api.get("/v2/apps/web").content)["app"]["instances"] == 1


def test_restart(api, make_app):
    make_app("/web")
    finish_deployments()
    response = api.post("/v2/apps/web/restart")
    assert response.status_code == 200
    assert Deployment.objects.get(pk=response["Marathon-Deployment-Id"]).kind == DeploymentKind.RESTART


def test_delete_app(api, make_app):
    make_app("/web")
    response = api.delete("/v2/apps/web?force=true")
    assert response.status_code == 200
    assert Deployment.objects.get(pk=json.loads(response.content)["deploymentId"]).kind == DeploymentKind.STOP
    assert api.get("/v2/apps/web").status_code == 404
    assert json.loads(api.get("/v2/apps").content) == {"apps": []}


def test_kill_one_task(api, make_app):
    app, _ = make_app("/web", instances=2)
    task_id = app.instances.first().task_id
    response = api.delete(f"/v2/apps//web/tasks/{task_id}")
    assert response.status_code == 200
    assert json.loads(response.content)["task"]["id"] == task_id
    assert Instance.objects.get(pk=app.instances.first().pk).status in ("stopping", "stopped")


def test_kill_one_task_with_scale_lowers_instances(api, make_app):
    app, _ = make_app("/web", instances=2)
    task_id = app.instances.first().task_id
    response = api.delete(f"/v2/apps/web/tasks/{task_id}?scale=true&force=true")
    assert set(json.loads(response.content)) == {"deploymentId", "version"}
    assert json.loads(api.get("/v2/apps/web").content)["app"]["instances"] == 1


def test_kill_all_tasks_of_an_app(api, make_app):
    make_app("/web", instances=2)
    make_app("/other")
    response = api.delete("/v2/apps/web/tasks")
    assert [task["appId"] for task in json.loads(response.content)["tasks"]] == ["/web", "/web"]
    assert Instance.objects.filter(app__marathon_id="/other", status="staged").count() == 1


def test_kill_tasks_by_host_that_runs_none(api, make_app):
    make_app("/web")
    assert json.loads(api.delete("/v2/apps/web/tasks?host=elsewhere").content) == {"tasks": []}
    assert Instance.objects.get().status == "staged"


def test_bulk_kill_skips_unknown_ids(api, make_app):
    app, _ = make_app("/web", instances=2)
    task_id = app.instances.first().task_id
    unknown = "web.instance-00000000-0000-0000-0000-000000000000"
    response = send(api, "post", "/v2/tasks/delete", {"ids": [task_id, unknown]})
    assert [task["id"] for task in json.loads(response.content)["tasks"]] == [task_id]
    assert Instance.objects.filter(status="staged").count() == 1


def test_tasks_status_filter(api, make_app):
    app, _ = make_app("/web", instances=2)
    Instance.objects.filter(pk=app.instances.first().pk).update(status="running")
    assert len(json.loads(api.get("/v2/tasks?status=running").content)["tasks"]) == 1
    assert len(json.loads(api.get("/v2/tasks?status=STAGING").content)["tasks"]) == 1
    assert len(json.loads(api.get("/v2/tasks").content)["tasks"]) == 2


def test_deployments_list_only_running_ones(api, make_app):
    make_app("/web")
    make_app("/api")
    Deployment.objects.filter(app_marathon_id="/api").update(status=DeploymentStatus.SUCCEEDED)
    assert [item["affectedApps"] for item in json.loads(api.get("/v2/deployments").content)] == [["/web"]]


def test_delete_deployment_with_force_is_202_and_empty(api, make_app):
    _, deployment = make_app("/web")
    response = api.delete(f"/v2/deployments/{deployment.id}?force=true")
    assert (response.status_code, response.content) == (202, b"")
    assert json.loads(api.get("/v2/deployments").content) == []


def test_delete_deployment_rolls_back(api, make_app):
    make_app("/web", env={"V": "1"})
    finish_deployments()
    deployment_id = json.loads(send(api, "put", "/v2/apps/web", {"env": {"V": "2"}}).content)["deploymentId"]
    response = api.delete(f"/v2/deployments/{deployment_id}")
    assert response.status_code == 200
    assert json.loads(response.content)["deploymentId"] != deployment_id
    assert json.loads(api.get("/v2/apps/web").content)["app"]["env"] == {"V": "1"}


def test_server_endpoints(api, make_app):
    make_app("/web")
    assert json.loads(api.get("/v2/leader").content) == {"leader": "testserver"}
    assert json.loads(api.get("/v2/queue").content) == {"queue": []}
    metrics = json.loads(api.get("/metrics").content)
    assert metrics["gauges"]["apps"] == {"value": 1}


def test_tasks_say_warm_or_cold_only_when_asked(api, make_app):
    app, _ = make_app("/web", instances=3)
    warm, cold, waiting = app.instances.order_by("created_at")
    Instance.objects.filter(pk=warm.pk).update(timings_s={"claim": 0.05, "boot_to_exec": 0.3})
    Instance.objects.filter(pk=cold.pk).update(timings_s={"define": 0.1, "boot_to_exec": 2.0})
    kinds = {warm.task_id: "warm", cold.task_id: "cold", waiting.task_id: None}
    for path in ("/v2/tasks", "/v2/apps/web/tasks", "/v2/apps/web", "/v2/apps?embed=apps.tasks"):
        plain = json.loads(api.get(path).content)
        asked = json.loads(api.get(path + ("&" if "?" in path else "?") + "embed=tasks.startKind").content)
        plain_tasks, asked_tasks = (
            body.get("tasks") or body.get("app", {}).get("tasks") or body["apps"][0]["tasks"] for body in (plain, asked)
        )
        # What marathon-python 0.13 parses (it raises on any other task key) unless asked for.
        assert all(task_unknown_keys(task) == {} for task in plain_tasks), path
        assert {task["id"]: task["startKind"] for task in asked_tasks} == kinds, path
