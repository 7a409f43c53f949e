"""Issue 9, "every value a tenant sends is checked against platform policy": a tenant's developer,
with a token pinned to the tenant, posts app definitions to the live portal (daphne + a Celery
worker on the test database) and gets a 422 naming the field and the platform limit, or a 413
for an oversized body; nothing of a refused request is stored. No compute host is needed: the
refusals happen before anything is placed."""

import http.client
import json
import urllib.parse
import urllib.request

import pytest

from portal.models import App
from tenants import services as tenant_services
from tenants.choices import TenantRole
from tests.support.live_stack import web_server

pytestmark = [pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024
REQUEST_TIMEOUT_S = 30


def app_json(app_id: str, **fields) -> dict:
    body = {
        "id": app_id,
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 64,
        "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": "demo/hello:latest"}},
        "networks": [{"mode": "container/bridge"}],
    }
    body.update(fields)
    return body


def bridge_app(app_id: str, port_mappings: list[dict], **fields) -> dict:
    body = app_json(app_id, **fields)
    body["container"]["portMappings"] = port_mappings
    return body


@pytest.fixture
def token(live_stack, tenant, member_of) -> str:
    developer = member_of(tenant, TenantRole.DEVELOPER)
    _, key = tenant_services.api_token_create(user=developer, name="policy", tenant=tenant)
    return key


def send(base_url: str, token: str, method: str, path: str, body: bytes | None = None, *, chunked: bool = False):
    """(status, parsed JSON or text) of one request; chunked sends the body with no Content-Length."""
    address = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=REQUEST_TIMEOUT_S)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    try:
        if chunked:
            pieces = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
            connection.request(method, path, body=pieces, headers=headers, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def post_app(base_url: str, token: str, definition: dict):
    return send(base_url, token, "POST", "/v2/apps", json.dumps(definition).encode())


def errors_at(body: dict, path: str) -> str:
    """Every message the 422 body gives for ``path``, joined (empty when it names no such path)."""
    return " ".join(" ".join(d["errors"]) for d in body.get("details", []) if d["path"] == path)


def assert_nothing_stored(base_url: str, token: str, app_id: str) -> None:
    assert not App.objects.filter(marathon_id=app_id).exists(), f"{app_id} was stored"
    status, _ = send(base_url, token, "GET", f"/v2/apps{app_id}")
    assert status == 404


@pytest.fixture(scope="module")
def wide_range_web(live_stack, tmp_path_factory):
    """A second daphne of the same stack whose host port range covers every port, so the ports
    the platform itself listens on (this daphne's and the embedded registry's) fall inside it:
    they must still be refused as reserved."""
    registry_port = urllib.parse.urlsplit(live_stack.env["PORTAL_EMBEDDED_REGISTRY_URL"]).port
    log_path = tmp_path_factory.mktemp("wide-range-web") / "web.log"
    env = live_stack.env | {"PORTAL_HOST_PORT_MIN": "1024", "PORTAL_HOST_PORT_MAX": "65535"}
    with web_server(env=env, log_path=log_path) as (url, _env):
        yield url, urllib.parse.urlsplit(url).port, registry_port


def test_a_fixed_host_port_outside_the_platform_range_is_refused_and_nothing_stored(live_stack, token):
    status, body = post_app(
        live_stack.url, token, bridge_app("/policy/outside", [{"containerPort": 8080, "hostPort": 5999}])
    )

    assert status == 422, body
    message = errors_at(body, "/container/portMappings(0)/hostPort")
    assert "20000" in message and "30000" in message, body
    assert_nothing_stored(live_stack.url, token, "/policy/outside")


def test_a_fixed_host_port_inside_the_range_is_accepted(live_stack, token):
    status, body = post_app(
        live_stack.url, token, bridge_app("/policy/inside", [{"containerPort": 8080, "hostPort": 29999}])
    )

    assert status == 201, body
    assert App.objects.filter(marathon_id="/policy/inside").exists()


def test_the_embedded_registry_port_is_reserved_even_inside_the_range(wide_range_web, token):
    url, _, registry_port = wide_range_web
    status, body = post_app(
        url, token, bridge_app("/policy/registry-port", [{"containerPort": 5000, "hostPort": registry_port}])
    )

    assert status == 422, body
    assert "reserved" in errors_at(body, "/container/portMappings(0)/hostPort"), body
    assert_nothing_stored(url, token, "/policy/registry-port")


def test_the_portal_port_is_reserved_even_inside_the_range(wide_range_web, token):
    url, portal_port, _ = wide_range_web
    status, body = post_app(
        url, token, bridge_app("/policy/portal-port", [{"containerPort": 8000, "hostPort": portal_port}])
    )

    assert status == 422, body
    assert "reserved" in errors_at(body, "/container/portMappings(0)/hostPort"), body
    assert_nothing_stored(url, token, "/policy/portal-port")


def test_a_tcp_health_check_on_a_host_service_port_is_refused(live_stack, token):
    definition = bridge_app(
        "/policy/tcp-redis",
        [{"containerPort": 8080, "hostPort": 0}],
        healthChecks=[{"protocol": "TCP", "port": 6379}],
    )

    status, body = post_app(live_stack.url, token, definition)

    assert status == 422, body
    assert "own" in errors_at(body, "/healthChecks(0)/port"), body
    assert_nothing_stored(live_stack.url, token, "/policy/tcp-redis")


def test_an_http_health_check_on_a_port_not_of_the_app_is_refused(live_stack, token):
    definition = bridge_app(
        "/policy/http-other",
        [{"containerPort": 8080, "hostPort": 21000}],
        healthChecks=[{"protocol": "HTTP", "path": "/", "port": 21001}],
    )

    status, body = post_app(live_stack.url, token, definition)

    assert status == 422, body
    assert "own" in errors_at(body, "/healthChecks(0)/port"), body
    assert_nothing_stored(live_stack.url, token, "/policy/http-other")


def test_a_day_long_kill_grace_period_is_refused_naming_the_cap(live_stack, token):
    definition = app_json("/policy/grace", taskKillGracePeriodSeconds=86400)

    status, body = post_app(live_stack.url, token, definition)

    assert status == 422, body
    message = errors_at(body, "/taskKillGracePeriodSeconds")
    assert "at most" in message and "platform limit" in message, body
    assert_nothing_stored(live_stack.url, token, "/policy/grace")


def test_a_two_mib_body_is_refused_with_413_and_nothing_stored(live_stack, token):
    body = json.dumps(app_json("/policy/big", env={"BLOB": "x" * (2 * MIB)})).encode()

    status, answer = send(live_stack.url, token, "POST", "/v2/apps", body)

    assert status == 413, answer
    assert "bytes" in answer["message"], answer
    assert_nothing_stored(live_stack.url, token, "/policy/big")


def test_a_chunked_body_without_length_over_the_cap_is_refused_with_413(live_stack, token):
    body = json.dumps(app_json("/policy/chunked", env={"BLOB": "x" * (2 * MIB)})).encode()

    status, answer = send(live_stack.url, token, "POST", "/v2/apps", body, chunked=True)

    assert status == 413, answer
    assert_nothing_stored(live_stack.url, token, "/policy/chunked")
