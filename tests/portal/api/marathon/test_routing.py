"""Marathon's URL quirks: app ids are greedy paths routed by suffix, doubled slashes are dropped."""

import json

import pytest

from portal.api.marathon import urls

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("rest", "view", "kwargs"),
    [
        ("web", urls.app_view, {"app_id": "/web"}),
        ("/web", urls.app_view, {"app_id": "/web"}),
        ("shop//web/", urls.app_view, {"app_id": "/shop/web"}),
        ("tasks", urls.app_view, {"app_id": "/tasks"}),
        ("shop/web/tasks", urls.app_tasks_view, {"app_id": "/shop/web"}),
        (
            "/shop/web/tasks/shop_web.instance-1",
            urls.app_task_view,
            {"app_id": "/shop/web", "task_id": "shop_web.instance-1"},
        ),
        ("shop/web/restart", urls.app_restart_view, {"app_id": "/shop/web"}),
        ("shop/web/versions", urls.app_versions_view, {"app_id": "/shop/web"}),
        (
            "a/versions/2026-01-01T00:00:00.000Z",
            urls.app_version_view,
            {"app_id": "/a", "version": "2026-01-01T00:00:00.000Z"},
        ),
    ],
)
def test_app_paths_route_by_suffix(rest, view, kwargs):
    assert urls.resolve_app_path(rest) == (view, kwargs)


def test_doubled_slash_reaches_the_app(api, make_app):
    make_app("/shop/web")
    response = api.get("/v2/apps//shop/web")
    assert response.status_code == 200
    assert json.loads(response.content)["app"]["id"] == "/shop/web"


def test_suffix_routes_on_a_nested_app(api, make_app):
    app, _ = make_app("/shop/web", instances=2)
    tasks = json.loads(api.get("/v2/apps/shop/web/tasks").content)["tasks"]
    versions = json.loads(api.get("/v2/apps//shop/web/versions").content)
    assert [task["appId"] for task in tasks] == ["/shop/web", "/shop/web"]
    assert versions["versions"] == [app.current_version.version]


def test_trailing_slash_on_the_app_list(api, make_app):
    make_app("/web")
    assert [app["id"] for app in json.loads(api.get("/v2/apps/").content)["apps"]] == ["/web"]


def test_unknown_v2_resource_is_a_marathon_404(api):
    response = api.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "message" in json.loads(response.content)
