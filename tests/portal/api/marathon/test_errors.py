"""Every error in Marathon's shape (API-NOTES §2): JSON with a message, details for 422,
deployments for a locked app; never a 5xx for bad input, and nothing stored on error."""

import json

import pytest

from portal.models import App, AppVersion, Deployment, Instance

from .conftest import app_json
from .shapes import marathon_error

pytestmark = pytest.mark.django_db


def post_json(api, path, body):
    return api.post(path, body if isinstance(body, str) else json.dumps(body), content_type="application/json")


def put_json(api, path, body):
    return api.put(path, body if isinstance(body, str) else json.dumps(body), content_type="application/json")


def nothing_stored():
    return not (App.objects.exists() or AppVersion.objects.exists() or Deployment.objects.exists())


@pytest.mark.parametrize("body", ["{not json", "", "[1, 2", '{"cpus": NaN, "id": "/x"}'])
def test_body_that_is_not_json_is_400(api, body):
    error = marathon_error(post_json(api, "/v2/apps", body), 400)
    assert error["message"] == "Invalid JSON"
    assert error["details"][0]["path"] == "/"
    assert nothing_stored()


@pytest.mark.parametrize("body", [[app_json()], "a string", 3])
def test_body_of_the_wrong_json_type_is_400(api, body):
    assert marathon_error(post_json(api, "/v2/apps", body), 400)["message"] == "Invalid JSON"
    assert nothing_stored()


def test_bad_definition_is_422_with_every_path_and_nothing_stored(api):
    body = app_json(
        "/Bad_Id",
        instances=-1,
        cpus=0,
        upgradeStrategy={"minimumHealthCapacity": 2},
        container={"type": "DOCKER", "docker": {"image": "demo/hello"}, "portMappings": [{"containerPort": "x"}]},
        tty=True,
    )
    error = marathon_error(post_json(api, "/v2/apps", body), 422)
    assert error["message"] == "Object is not valid"
    paths = {detail["path"] for detail in error["details"]}
    assert {"/id", "/instances", "/cpus", "/upgradeStrategy/minimumHealthCapacity", "/tty"} <= paths
    assert any(path.startswith("/container/portMappings(0)") for path in paths)
    assert all(detail["errors"] and all(isinstance(e, str) for e in detail["errors"]) for detail in error["details"])
    assert nothing_stored()


def test_definition_the_platform_cannot_run_is_422_at_its_path(api):
    body = app_json(container={"type": "MESOS"})
    error = marathon_error(post_json(api, "/v2/apps", body), 422)
    assert error["details"][0]["path"] == "/container/docker/image"
    assert nothing_stored()


@pytest.mark.parametrize("protocol", ["COMMAND", "MESOS_COMMAND"])
def test_command_health_checks_are_accepted(api, protocol):
    body = app_json(healthChecks=[{"protocol": protocol, "command": {"value": "test -f /tmp/ready"}}])
    response = post_json(api, "/v2/apps", body)
    assert response.status_code == 201, response.content
    assert response.json()["healthChecks"][0]["command"] == {"value": "test -f /tmp/ready"}


def test_a_check_command_longer_than_the_guest_takes_is_422(api):
    body = app_json(healthChecks=[{"protocol": "COMMAND", "command": {"value": "x" * 1001}}])
    error = marathon_error(post_json(api, "/v2/apps", body), 422)
    assert error["details"][0]["path"] == "/healthChecks(0)/command/value"
    assert nothing_stored()


def test_missing_id_on_post_is_422(api):
    body = app_json()
    del body["id"]
    assert marathon_error(post_json(api, "/v2/apps", body), 422)["details"] == [
        {"path": "/id", "errors": ["is required"]}
    ]


def test_bad_partial_update_is_422_and_the_app_keeps_its_version(api, make_app):
    app, _ = make_app("/web")
    error = marathon_error(put_json(api, "/v2/apps/web?force=true", {"mem": -5, "env": {"A": 1}}), 422)
    assert {detail["path"] for detail in error["details"]} >= {"/mem", "/env/A"}
    app.refresh_from_db()
    assert (app.versions.count(), Deployment.objects.count()) == (1, 1)


def test_existing_id_is_409(api, make_app):
    make_app("/web")
    error = marathon_error(post_json(api, "/v2/apps", app_json("/web")), 409)
    assert error["message"] == "An app with id [/web] already exists."
    assert (App.objects.count(), AppVersion.objects.count()) == (1, 1)


def test_locked_app_is_409_with_the_blocking_deployments(api, make_app):
    app, deployment = make_app("/web")
    error = marathon_error(put_json(api, "/v2/apps/web", {"instances": 3}), 409)
    assert error["deployments"] == [{"id": str(deployment.id)}]
    assert "force=true" in error["message"]
    assert app.versions.count() == 1
    restart = marathon_error(api.post("/v2/apps/web/restart"), 409)
    assert restart["deployments"] == [{"id": str(deployment.id)}]


def test_over_quota_is_403_naming_the_quota_and_nothing_stored(api, tenant):
    tenant.quota.instances = 2
    tenant.quota.save()
    error = marathon_error(post_json(api, "/v2/apps", app_json(instances=3)), 403)
    assert "instances" in error["message"]
    assert nothing_stored() and not Instance.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("get", "/v2/apps/nope", "App '/nope' does not exist"),
        ("get", "/v2/apps//a/b", "App '/a/b' does not exist"),
        ("put", "/v2/apps/nope", None),
        ("patch", "/v2/apps/nope", "App '/nope' does not exist"),
        ("delete", "/v2/apps/nope", "App '/nope' does not exist"),
        ("post", "/v2/apps/nope/restart", "App '/nope' does not exist"),
        ("get", "/v2/apps/nope/tasks", "App '/nope' does not exist"),
        ("get", "/v2/apps/nope/versions", "App '/nope' does not exist"),
        ("get", "/v2/groups/nope", "Group '/nope' does not exist"),
        ("delete", "/v2/deployments/not-a-uuid", "DeploymentPlan not-a-uuid does not exist"),
        (
            "delete",
            "/v2/deployments/00000000-0000-0000-0000-000000000000",
            "DeploymentPlan 00000000-0000-0000-0000-000000000000 does not exist",
        ),
    ],
)
def test_unknown_resources_are_404_with_marathons_message(api, method, path, message):
    if method == "put":  # PUT creates a missing app; a rollback of a missing app is a 404
        response = put_json(api, path, {"version": "2020-01-01T00:00:00.000Z"})
        message = "App '/nope' does not exist"
    elif method == "patch":
        response = api.patch(path, json.dumps({"instances": 1}), content_type="application/json")
    else:
        response = getattr(api, method)(path)
    assert marathon_error(response, 404)["message"] == message


def test_unknown_version_is_404(api, make_app):
    make_app("/web")
    error = marathon_error(api.get("/v2/apps/web/versions/2001-01-01T00:00:00.000Z"), 404)
    assert error["message"] == "App '/web' does not exist in version 2001-01-01T00:00:00.000Z"
    rollback = marathon_error(put_json(api, "/v2/apps/web", {"version": "2001-01-01T00:00:00.000Z"}), 404)
    assert "does not exist in version" in rollback["message"]


def test_unknown_task_is_404(api, make_app):
    make_app("/web")
    for task_id in ("web.instance-00000000-0000-0000-0000-000000000000", "garbage"):
        assert (
            marathon_error(api.delete(f"/v2/apps/web/tasks/{task_id}"), 404)["message"]
            == f"Task '{task_id}' does not exist"
        )


def test_version_with_other_fields_is_422(api, make_app):
    app, _ = make_app("/web")
    body = {"version": app.current_version.version, "instances": 2}
    error = marathon_error(put_json(api, "/v2/apps/web?force=true", body), 422)
    assert error["details"][0]["path"] == "/version"


def test_bad_boolean_query_is_400(api, make_app):
    make_app("/web")
    assert "force" in marathon_error(api.delete("/v2/apps/web?force=maybe"), 400)["message"]
    assert App.objects.get().deleting is False


def test_scale_with_wipe_is_400(api, make_app):
    make_app("/web")
    marathon_error(api.delete("/v2/apps/web/tasks?scale=true&wipe=true"), 400)
    assert Instance.objects.get().status == "staged"


def test_malformed_task_id_in_bulk_kill_is_400(api, make_app):
    make_app("/web")
    marathon_error(post_json(api, "/v2/tasks/delete", {"ids": ["nonsense"]}), 400)
    marathon_error(post_json(api, "/v2/tasks/delete", {"ids": "web.instance-x"}), 422)
    assert Instance.objects.get().status == "staged"


def test_method_not_allowed_is_405_json(api):
    marathon_error(api.post("/v2/info"), 405)
    marathon_error(api.delete("/v2/tasks"), 405)


def test_unknown_task_status_filter_is_400(api):
    marathon_error(api.get("/v2/tasks?status=sleeping"), 400)


def test_event_stream_without_the_sse_accept_header_is_405(api):
    marathon_error(api.get("/v2/events", HTTP_ACCEPT="application/json"), 405)
