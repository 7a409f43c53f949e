"""Issue 9: the platform policy holds on every path a definition takes into the store: /v2 POST,
PUT and PATCH, /api/v1 create/update/scale, the Deploy form and its JSON tab, and a redeploy of
a stored version (rollback) that predates a tighter policy. Nothing is stored on refusal."""

import dataclasses
import json

import pytest
from django.test import Client

from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, Deployment
from portal.services.apps import DefinitionOutsidePolicy, app_create, app_rollback, app_scale
from tenants import services as tenant_services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole

pytestmark = pytest.mark.django_db

IMAGE = "127.0.0.1:5000/demo/hello:latest"
OUTSIDE_PORT_MESSAGE = "host port 5999 is outside the platform's host port range 20000-30000"


def definition_json(app_id: str = "/web", **fields) -> dict:
    body = {"id": app_id, "cpus": 0.1, "mem": 64, "container": {"docker": {"image": IMAGE}}}
    return body | fields


def with_host_port(body: dict, host_port: int) -> dict:
    body["networks"] = [{"mode": "container/bridge"}]
    body["container"]["portMappings"] = [{"containerPort": 8080, "hostPort": host_port}]
    return body


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


@pytest.fixture
def access(tenant, developer):
    return tenant_access_resolve(user=developer, slug=tenant.slug)


@pytest.fixture
def v2(developer, tenant) -> Client:
    _, key = tenant_services.api_token_create(user=developer, name="policy", tenant=tenant)
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


@pytest.fixture
def app_with_an_old_version(access):
    """An app whose earlier version was stored before the policy: a fixed host port of 5999,
    written past the parser as an old row would be."""
    app = app_create(access=access, definition=parse_app_definition(definition_json())).app
    bridge = parse_app_definition(with_host_port(definition_json(), 0))
    mapping = dataclasses.replace(bridge.container.port_mappings[0], host_port=5999)
    old = dataclasses.replace(bridge, container=dataclasses.replace(bridge.container, port_mappings=(mapping,)))
    version = AppVersion.objects.create(app=app, version="2020-01-01T00:00:00.000Z", definition=old.to_stored())
    Deployment.objects.update(status="succeeded")  # no compute host here: let the start count as done
    return app, version


def errors_at(body: dict, path: str) -> str:
    return " ".join(" ".join(d["errors"]) for d in body["details"] if d["path"] == path)


def test_v2_post_refuses_a_port_outside_the_range(v2):
    response = v2.post("/v2/apps", json.dumps(with_host_port(definition_json(), 5999)), content_type="application/json")
    assert response.status_code == 422
    assert OUTSIDE_PORT_MESSAGE in errors_at(response.json(), "/container/portMappings(0)/hostPort")
    assert not App.objects.exists()


def test_v2_put_and_patch_refuse_a_kill_grace_over_the_cap(v2, access):
    app_create(access=access, definition=parse_app_definition(definition_json()))
    Deployment.objects.update(status="succeeded")
    for method in ("put", "patch"):
        response = getattr(v2, method)(
            "/v2/apps/web", json.dumps({"taskKillGracePeriodSeconds": 121}), content_type="application/json"
        )
        assert response.status_code == 422, method
        message = errors_at(response.json(), "/taskKillGracePeriodSeconds")
        assert message == "must be at most 120 s (platform limit)"
    assert AppVersion.objects.count() == 1


def test_v2_rollback_to_a_version_stored_before_the_policy_is_refused(v2, app_with_an_old_version):
    app, old = app_with_an_old_version
    response = v2.put("/v2/apps/web", json.dumps({"version": old.version}), content_type="application/json")
    assert response.status_code == 422
    assert OUTSIDE_PORT_MESSAGE in errors_at(response.json(), "/container/portMappings(0)/hostPort")
    app.refresh_from_db()
    assert app.current_version.version != old.version and app.instances.filter(version=old).count() == 0


def test_the_rollback_service_refuses_it_for_every_interface(access, app_with_an_old_version):
    app, old = app_with_an_old_version
    with pytest.raises(DefinitionOutsidePolicy) as refused:
        app_rollback(access=access, app=app, version=old.version)
    assert refused.value.field == "/container/portMappings(0)/hostPort"
    assert refused.value.status_code == 422


def test_an_app_stored_under_an_older_policy_can_scale_down_or_stop_but_not_up(access, app_with_an_old_version):
    app, old = app_with_an_old_version
    App.objects.filter(pk=app.pk).update(current_version=old)
    app.refresh_from_db()
    with pytest.raises(DefinitionOutsidePolicy):
        app_scale(access=access, app=app, instances=2)
    assert app_scale(access=access, app=app, instances=0).kind == "scale"


def test_api_v1_create_and_scale_are_checked(tenant, developer, client_for, access):
    client = client_for(developer)
    base = f"/api/v1/tenants/{tenant.slug}/apps/"
    refused = client.post(base, with_host_port(definition_json(), 5999), format="json")
    assert refused.status_code == 422
    assert OUTSIDE_PORT_MESSAGE in errors_at(refused.json(), "/container/portMappings(0)/hostPort")
    assert not App.objects.exists()

    app = app_create(access=access, definition=parse_app_definition(definition_json())).app
    Deployment.objects.update(status="succeeded")
    over = client.post(f"{base}{app.pk}/scale/", {"instances": 101}, format="json")
    assert over.status_code == 422
    assert over.json() == {"/instances": ["must be at most 100 (platform limit)"]}
    assert AppVersion.objects.count() == 1


def test_the_deploy_json_tab_refuses_a_health_check_on_another_port(tenant, developer, login):
    body = with_host_port(definition_json("/json-app"), 0)
    body["healthChecks"] = [{"protocol": "TCP", "port": 6379}]
    response = login(developer).post(
        f"/t/{tenant.slug}/apps/deploy/", {"mode": "json", "definition_json": json.dumps(body)}
    )
    assert response.status_code == 422
    paths = {detail["path"] for detail in response.context["json_form"].path_errors}
    assert "/healthChecks(0)/port" in paths
    assert not App.objects.exists()


def test_the_deploy_form_refuses_instances_over_the_cap(tenant, developer, login):
    form = {
        "app_id": "/hello",
        "registry": "",
        "image": IMAGE,
        "cmd": "",
        "cpus": "0.5",
        "mem": "128",
        "instances": "101",
        "ports": "8080",
        "env": "",
        "health_check": "",
        "health_path": "",
    }
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", form)
    assert response.status_code == 422
    assert "at most 100 (platform limit)" in response.content.decode()
    assert not App.objects.exists()
