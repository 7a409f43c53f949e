"""Who reaches which tenant through /v2: the tenant comes from the token (pinned, or the user's
only tenant), roles come from tenants.access, and another tenant's apps do not exist."""

import json

import pytest
from django.test import Client

from portal.models import App, AppVersion, Deployment, Instance
from tenants import services as tenant_services
from tenants.choices import TenantRole
from tests.tenants.factories import TenantFactory

from .conftest import app_json, token_client
from .shapes import marathon_error

pytestmark = pytest.mark.django_db


def test_token_header_form(token_key, make_app):
    make_app("/web")
    response = token_client(token_key, scheme="Token {key}").get("/v2/apps")
    assert [app["id"] for app in json.loads(response.content)["apps"]] == ["/web"]


def test_marathon_python_token_form(token_key, make_app):
    make_app("/web")
    response = token_client(token_key, scheme="token={key}").get("/v2/apps")
    assert [app["id"] for app in json.loads(response.content)["apps"]] == ["/web"]


def test_no_credentials_is_401():
    body = marathon_error(Client().get("/v2/apps"), 401)
    assert "Token" in body["message"]


def test_unknown_token_is_401():
    marathon_error(token_client("hvm_not-a-token").get("/v2/apps"), 401)


def test_revoked_token_is_401(developer, tenant):
    token, key = tenant_services.api_token_create(user=developer, name="old", tenant=tenant)
    tenant_services.api_token_revoke(user=developer, token=token)
    marathon_error(token_client(key).get("/v2/apps"), 401)


def test_ping_needs_no_credentials():
    response = Client().get("/ping")
    assert (response.status_code, response.content, response["Content-Type"]) == (200, b"pong", "text/plain")


def test_pinned_token_chooses_its_tenant_among_several(developer, tenant, make_app):
    second = TenantFactory()
    second.memberships.create(user=developer, role=TenantRole.DEVELOPER)
    make_app("/web")
    _, key = tenant_services.api_token_create(user=developer, name="second", tenant=second)
    assert json.loads(token_client(key).get("/v2/apps").content)["apps"] == []


def test_unpinned_token_of_a_single_tenant_member_uses_that_tenant(developer, make_app):
    make_app("/web")
    _, key = tenant_services.api_token_create(user=developer, name="unpinned")
    assert [app["id"] for app in json.loads(token_client(key).get("/v2/apps").content)["apps"]] == ["/web"]


def test_unpinned_token_of_a_member_of_several_tenants_is_403(developer):
    TenantFactory().memberships.create(user=developer, role=TenantRole.VIEWER)
    _, key = tenant_services.api_token_create(user=developer, name="unpinned")
    body = marathon_error(token_client(key).get("/v2/apps"), 403)
    assert "pinned" in body["message"]


def test_token_of_a_tenant_the_user_left_is_403(developer, tenant, token_key):
    tenant.memberships.filter(user=developer).delete()
    marathon_error(token_client(token_key).get("/v2/apps"), 403)


def test_viewer_reads_but_cannot_write(tenant, member_of, make_app):
    viewer = member_of(tenant, TenantRole.VIEWER)
    _, key = tenant_services.api_token_create(user=viewer, name="ro", tenant=tenant)
    make_app("/web")
    viewer_api = token_client(key)
    assert viewer_api.get("/v2/apps/web").status_code == 200
    body = marathon_error(
        viewer_api.post("/v2/apps", json.dumps(app_json("/other")), content_type="application/json"), 403
    )
    assert "developer" in body["message"]
    assert marathon_error(viewer_api.delete("/v2/apps/web"), 403)
    assert list(App.objects.values_list("marathon_id", flat=True)) == ["/web"]


def test_session_login_reads(developer, make_app):
    make_app("/web")
    browser = Client()
    browser.force_login(developer)
    assert json.loads(browser.get("/v2/apps/web").content)["app"]["id"] == "/web"


def test_session_writes_need_the_csrf_token(developer):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(developer)
    response = browser.post("/v2/apps", json.dumps(app_json("/web")), content_type="application/json")
    assert "CSRF" in marathon_error(response, 403)["message"]
    assert not App.objects.exists()


def _state():
    return (
        list(App.objects.values_list("marathon_id", "deleting", "current_version_id")),
        AppVersion.objects.count(),
        list(Deployment.objects.values_list("id", "status")),
        list(Instance.objects.values_list("id", "status")),
    )


def test_another_tenants_app_is_not_found_and_nothing_changes(make_app, intruder_api):
    app, _ = make_app("/web", instances=2)
    task_id = app.instances.first().task_id
    before = _state()
    answers = [
        intruder_api.get("/v2/apps/web"),
        intruder_api.get("/v2/apps/web/tasks"),
        intruder_api.get("/v2/apps/web/versions"),
        intruder_api.get(f"/v2/apps/web/versions/{app.current_version.version}"),
        intruder_api.patch("/v2/apps/web", json.dumps({"instances": 5}), content_type="application/json"),
        intruder_api.post("/v2/apps/web/restart?force=true"),
        intruder_api.delete("/v2/apps/web/tasks?force=true"),
        intruder_api.delete(f"/v2/apps/web/tasks/{task_id}?force=true"),
        intruder_api.delete("/v2/apps/web?force=true"),
        intruder_api.delete(f"/v2/deployments/{app.deployments.first().id}"),
        intruder_api.get("/v2/groups/web"),
    ]
    assert [answer.status_code for answer in answers] == [404] * len(answers)
    killed = intruder_api.post("/v2/tasks/delete", json.dumps({"ids": [task_id]}), content_type="application/json")
    assert json.loads(killed.content) == {"tasks": []}
    listings = [json.loads(intruder_api.get(path).content) for path in ("/v2/apps", "/v2/tasks", "/v2/deployments")]
    assert listings == [{"apps": []}, {"tasks": []}, []]
    assert _state() == before


def test_put_of_the_same_id_by_another_tenant_creates_its_own_app(tenant, other_tenant, make_app, intruder_api):
    app, _ = make_app("/web")
    before = _state()
    response = intruder_api.put(
        "/v2/apps/web", json.dumps(app_json("/web", instances=0)), content_type="application/json"
    )
    assert response.status_code == 201
    assert App.objects.get(tenant=other_tenant).marathon_id == "/web"
    assert App.objects.get(tenant=tenant).current_version_id == app.current_version_id
    assert Instance.objects.filter(tenant=tenant).count() == len(before[3])
