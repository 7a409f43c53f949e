"""portal.stream_security: the origin rule of a WebSocket handshake, the access re-check of a
stream's credentials and the per-user leases in the real (test) Redis. The live stack's view of
the same rules is tests/security/test_streams.py."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from portal.stream_security import (
    StreamCredentials,
    StreamGuard,
    StreamVerdict,
    lease_count,
    stream_access_now,
    websocket_origin_allowed,
)
from tenants.choices import TenantRole
from tenants.models import Membership
from tenants.services import api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _only_the_handshakes_own_origin(settings):
    """The rule for the origin a handshake reached the portal at; trusted origins have tests of
    their own below (the public URL's is one: tests/portal/test_settings.py)."""
    settings.CSRF_TRUSTED_ORIGINS = []


def handshake(*, scheme: str = "ws", host: str = "127.0.0.2:8000", origin: str | None, cookie: bool = True, **extra):
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", b"sessionid=x"))
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]
    return {"type": "websocket", "scheme": scheme, "headers": headers, "path": "/ws/t/x/"}


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        (handshake(origin="http://127.0.0.2:8000"), True),
        (handshake(origin="HTTP://127.0.0.2:8000"), True),  # scheme and host are case-insensitive
        (handshake(scheme="wss", origin="https://127.0.0.2:8000"), True),
        (handshake(scheme="wss", origin="http://127.0.0.2:8000"), False),
        (handshake(origin="https://127.0.0.2:8000"), False),
        (handshake(origin="http://127.0.0.1:20001"), False),
        (handshake(origin="http://127.0.0.2"), False),
        (handshake(origin="http://localhost:8000"), False),
        (handshake(origin="null"), False),
        (handshake(origin=None), False),
        (handshake(origin=None, cookie=False), True),  # no credentials: the consumer refuses it with 4403
        (handshake(host="evil.example:8000", origin="http://evil.example:8000"), False),  # not in ALLOWED_HOSTS
    ],
)
def test_websocket_origin_must_be_the_portals_exact_origin(scope, allowed):
    assert websocket_origin_allowed(scope) is allowed


def test_behind_a_tls_proxy_the_origin_is_https(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    forwarded = {"x-forwarded-proto": "https"}
    assert websocket_origin_allowed(handshake(origin="https://127.0.0.2:8000", **forwarded))
    assert not websocket_origin_allowed(handshake(origin="http://127.0.0.2:8000", **forwarded))
    assert not websocket_origin_allowed(handshake(origin="https://127.0.0.2:8000"))  # the proxy did not say so


def test_trusted_origins_are_exact(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://portal.example.test"]
    assert websocket_origin_allowed(handshake(origin="https://portal.example.test"))
    assert not websocket_origin_allowed(handshake(origin="https://portal.example.test:8443"))
    assert not websocket_origin_allowed(handshake(origin="http://portal.example.test"))
    # Not through a Host the portal does not serve, even from a trusted origin.
    assert not websocket_origin_allowed(handshake(host="rebound.example:8000", origin="https://portal.example.test"))


@pytest.fixture
def viewer(tenant, member_of):
    return member_of(tenant, TenantRole.VIEWER)


def test_token_credentials_lose_access_when_the_token_is_revoked(tenant, viewer):
    token, _key = api_token_create(user=viewer, name="events", tenant=tenant)
    credentials = StreamCredentials(user_id=viewer.pk, slug=tenant.slug, token_id=token.pk)
    assert stream_access_now(credentials).tenant == tenant
    api_token_revoke(user=viewer, token=token)
    assert stream_access_now(credentials) is None


def test_a_token_pinned_to_another_tenant_gives_no_access(tenant, other_tenant, viewer):
    Membership.objects.create(tenant=other_tenant, user=viewer, role=TenantRole.VIEWER)
    token, _key = api_token_create(user=viewer, name="events", tenant=other_tenant)
    assert stream_access_now(StreamCredentials(user_id=viewer.pk, slug=tenant.slug, token_id=token.pk)) is None


def test_session_credentials_lose_access_on_logout_or_password_change(tenant, viewer):
    client = Client()
    client.force_login(viewer)
    credentials = StreamCredentials(user_id=viewer.pk, slug=tenant.slug, session_key=client.session.session_key)
    assert stream_access_now(credentials).tenant == tenant
    viewer.set_password("another-password-1")
    viewer.save()
    assert stream_access_now(credentials) is None  # the session's auth hash no longer matches


def test_leases_cap_the_user_and_expire_without_their_process(tenant, viewer, settings):
    settings.MAX_STREAMS_PER_USER = 2
    settings.STREAM_LEASE_TTL_S = 0.5
    credentials = StreamCredentials(user_id=viewer.pk, slug=tenant.slug, session_key="unused")
    first, crashed = StreamGuard.open(credentials), StreamGuard.open(credentials)
    assert first is not None and crashed is not None
    assert StreamGuard.open(credentials) is None and lease_count(user_id=viewer.pk) == 2
    first.close()
    third = StreamGuard.open(credentials)
    assert third is not None
    time.sleep(0.6)  # nobody refreshes "crashed" (nor "third"): both expire
    assert lease_count(user_id=viewer.pk) == 0
    fresh = [StreamGuard.open(credentials) for _ in range(2)]
    assert all(fresh) and lease_count(user_id=viewer.pk) == 2
    for guard in fresh:
        guard.close()
    assert lease_count(user_id=viewer.pk) == 0


def test_recheck_refreshes_the_lease_and_reports_lost_access(tenant, viewer, settings):
    settings.STREAM_LEASE_TTL_S = 0.5
    token, _key = api_token_create(user=viewer, name="events", tenant=tenant)
    guard = StreamGuard.open(StreamCredentials(user_id=viewer.pk, slug=tenant.slug, token_id=token.pk))
    for _ in range(3):
        time.sleep(0.3)
        assert guard.recheck() is StreamVerdict.ALLOWED
    assert lease_count(user_id=viewer.pk) == 1  # 0.9 s later: kept alive by the re-checks
    token.delete()
    assert guard.recheck() is StreamVerdict.ACCESS_LOST
    guard.close()
    assert lease_count(user_id=viewer.pk) == 0
