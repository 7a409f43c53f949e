"""Fixtures for the /v2 API tests: a developer with a token pinned to a tenant, a Django test
client that sends it, and apps created through the real services."""

import collections
import collections.abc

import pytest
from django.test import Client

from portal.marathon import parse_app_definition
from portal.services import apps as app_services
from tenants import services as tenant_services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole

# marathon/util.py still uses collections.Iterable (removed in Python 3.10): API-NOTES pitfall 5.
collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]

IMAGE = "demo/hello:latest"


def app_json(app_id: str = "/web", **fields) -> dict:
    body = {
        "id": app_id,
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 64,
        "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE}},
    }
    body.update(fields)
    return body


def token_client(key: str, *, scheme: str = "Token {key}") -> Client:
    return Client(HTTP_AUTHORIZATION=scheme.format(key=key))


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


@pytest.fixture
def access(tenant, developer):
    return tenant_access_resolve(user=developer, slug=tenant.slug)


@pytest.fixture
def token_key(developer, tenant) -> str:
    _, key = tenant_services.api_token_create(user=developer, name="marathon", tenant=tenant)
    return key


@pytest.fixture
def api(token_key) -> Client:
    """A client of the tenant's developer, authenticated by a pinned token."""
    return token_client(token_key)


@pytest.fixture
def make_app(access):
    """make_app(app_id, **fields) -> (App, Deployment), created through the real service."""

    def make(app_id: str = "/web", **fields):
        definition = parse_app_definition(app_json(app_id, **fields))
        deployment = app_services.app_create(access=access, definition=definition)
        return deployment.app, deployment

    return make


@pytest.fixture
def intruder_api(other_tenant, member_of) -> Client:
    """A developer of another tenant, with a token pinned to it."""
    intruder = member_of(other_tenant, TenantRole.OWNER)
    _, key = tenant_services.api_token_create(user=intruder, name="intruder", tenant=other_tenant)
    return token_client(key)
