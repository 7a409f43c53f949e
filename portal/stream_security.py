"""Who may hold a live stream: a WebSocket of portal.consumers or ``GET /v2/events``. One rule for
every stream kind.

Contract:

- Origin. A stream that rides on the session cookie opens only from the portal's own origin
  (scheme, host and port exactly as the request reached the portal: ``ws`` -> ``http``, ``wss``
  -> ``https``, or https when SECURE_PROXY_SSL_HEADER says so) or one listed in
  CSRF_TRUSTED_ORIGINS (PORTAL_TRUSTED_ORIGINS, which Django's CSRF check of session POSTs reads
  too). A tenant's published app runs on the portal's host name under another port, so a host
  check alone (Channels' AllowedHostsOriginValidator) let its pages read a visiting member's
  streams. Browsers always send Origin on a WebSocket handshake, so a handshake that carries a
  cookie and no Origin is refused too. A refused WebSocket is closed before accept (HTTP 403 on
  the handshake, ``StreamOriginValidator``); ``/v2/events`` with the session answers 403
  (``request_origin_allowed``); token requests carry no ambient credential and are not
  origin-bound.
- Access. Every open stream calls ``StreamGuard.recheck`` every STREAM_RECHECK_S: the session is
  read again from the session store (logged out, expired, password changed: gone), the token row
  again (revoked or deleted: gone), the user (deactivated: gone) and the membership
  (tenants.access.tenant_access_resolve, at least viewer). A stream that lost access ends: a
  WebSocket with close code 4403, /v2/events by ending the response.
- Streams per user. Every open stream holds a lease: a member of the Redis sorted set
  ``portal:stream-leases:user:<id>`` scored by its expiry in Redis' clock. A lease is taken only
  while the user holds fewer than MAX_STREAMS_PER_USER unexpired ones (one Lua script, so web
  processes never race past the cap), refreshed by each re-check and removed on close; the
  leases of a web process that died expire by themselves after STREAM_LEASE_TTL_S. Over the
  cap: WebSocket close 4429, HTTP 429, both with ``too_many_streams_message()``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from types import SimpleNamespace

import redis
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user
from django.http.request import split_domain_port, validate_host

from portal.shared_redis import channel_layer_redis_url, redis_client
from tenants.access import RoleRequired, TenantAccess, TenantNotFound, tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ApiToken

logger = logging.getLogger("portal.stream_security")

CLOSE_TOO_MANY_STREAMS = 4429
LEASE_KEY_PREFIX = "portal:stream-leases:user:"

# KEYS[1] the user's lease set; ARGV: lease id, cap, ttl in ms. 1: held (taken or refreshed), 0:
# the user holds the cap already. Redis' own clock, so web hosts with skewed clocks agree.
_LEASE_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def too_many_streams_message() -> str:
    return (
        f"A user may hold at most {settings.MAX_STREAMS_PER_USER} open streams "
        "(WebSockets and /v2/events together): close one first."
    )


# -- origin ------------------------------------------------------------------------------------------


def origin_allowed(origin: str | None, *, own_origin: str | None) -> bool:
    """Scheme, host and port equal to the portal's own origin or a trusted one; nothing else."""
    if not origin:
        return False
    origin = origin.lower()
    if own_origin is not None and origin == own_origin.lower():
        return True
    return origin in {trusted.lower() for trusted in settings.CSRF_TRUSTED_ORIGINS}


def request_origin_allowed(request) -> bool:
    """For a session-authenticated GET: a same-origin GET carries no Origin (and a cross-origin
    read always does), so only a present, foreign Origin is refused."""
    origin = request.headers.get("Origin")
    return origin is None or origin_allowed(origin, own_origin=f"{request.scheme}://{request.get_host()}")


def _allowed_hosts() -> list[str]:
    # As HttpRequest.get_host: DEBUG with no ALLOWED_HOSTS allows the local names.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def _header(scope, name: bytes) -> str | None:
    for header_name, value in scope.get("headers", []):
        if header_name == name:
            return value.decode("latin1")
    return None


def websocket_own_origin(scope) -> str | None:
    """The origin the handshake reached the portal at, or None for a Host the portal does not serve."""
    host = _header(scope, b"host")
    if settings.USE_X_FORWARDED_HOST and _header(scope, b"x-forwarded-host"):
        host = _header(scope, b"x-forwarded-host").split(",")[0].strip()
    if not host:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    secure = scope.get("scheme") == "wss"
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        forwarded = _header(scope, meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if forwarded is not None:
            secure = forwarded.split(",")[0].strip() == secure_value
    return f"{'https' if secure else 'http'}://{host}"


def websocket_origin_allowed(scope) -> bool:
    own_origin = websocket_own_origin(scope)
    if own_origin is None:  # a Host the portal does not serve (DNS rebinding): as Django's 400
        return False
    origin = _header(scope, b"origin")
    if origin is None:
        # Not a browser (browsers always send Origin): fine without credentials, which the
        # consumer refuses anyway; never with a cookie.
        return _header(scope, b"cookie") is None
    return origin_allowed(origin, own_origin=own_origin)


class StreamOriginValidator:
    """ASGI middleware for the websocket side: a handshake from a foreign origin gets a 403."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("StreamOriginValidator guards WebSocket connections only.")
        if websocket_origin_allowed(scope):
            return await self.application(scope, receive, send)
        logger.info(
            "streams.origin_refused",
            extra={"origin": _header(scope, b"origin"), "host": _header(scope, b"host"), "path": scope.get("path")},
        )
        return await WebsocketDenier()(scope, receive, send)


# -- access ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamCredentials:
    """What a stream was opened with: the session (its key) or the API token (its row)."""

    user_id: int
    slug: str
    session_key: str | None = None
    token_id: int | None = None


def stream_access_now(credentials: StreamCredentials) -> TenantAccess | None:
    """The access the stream's credentials give now (at least viewer), or None."""
    token = None
    if credentials.token_id is not None:
        token = ApiToken.objects.active().select_related("user", "tenant").filter(pk=credentials.token_id).first()
        user = token.user if token is not None else None
    elif credentials.session_key is not None:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=credentials.session_key)
        user = get_user(SimpleNamespace(session=store))  # verifies the session's auth hash too
    else:
        user = None
    if user is None or not user.is_authenticated or not user.is_active or user.pk != credentials.user_id:
        return None
    try:
        access = tenant_access_resolve(user=user, slug=credentials.slug, token=token)
        access.require(TenantRole.VIEWER)
    except (TenantNotFound, RoleRequired):
        return None
    return access


# -- leases ------------------------------------------------------------------------------------------


def _lease_redis_url() -> str:
    return settings.STREAM_LEASE_REDIS_URL or channel_layer_redis_url()


@cache
def _lease_script(url: str):
    client = redis_client(url)
    return client, client.register_script(_LEASE_SCRIPT)


def lease_hold(*, user_id: int, lease_id: str) -> bool:
    """Takes or refreshes the lease; False when the user holds the cap already."""
    _client, script = _lease_script(_lease_redis_url())
    ttl_ms = int(settings.STREAM_LEASE_TTL_S * 1000)
    held = script(keys=[f"{LEASE_KEY_PREFIX}{user_id}"], args=[lease_id, settings.MAX_STREAMS_PER_USER, ttl_ms])
    return bool(held)


def lease_release(*, user_id: int, lease_id: str) -> None:
    client, _script = _lease_script(_lease_redis_url())
    client.zrem(f"{LEASE_KEY_PREFIX}{user_id}", lease_id)


def lease_count(*, user_id: int) -> int:
    """The user's unexpired leases (for the tests and the operator)."""
    client, _script = _lease_script(_lease_redis_url())
    seconds, microseconds = client.time()
    return client.zcount(f"{LEASE_KEY_PREFIX}{user_id}", f"({seconds * 1000 + microseconds // 1000}", "+inf")


# -- one open stream ---------------------------------------------------------------------------------


class StreamVerdict(enum.Enum):
    ALLOWED = "allowed"
    ACCESS_LOST = "access_lost"
    TOO_MANY_STREAMS = "too_many_streams"


@dataclass
class StreamGuard:
    """One open stream: its credentials and its lease. Sync (database and Redis): call it from a
    thread (database_sync_to_async / sync_to_async)."""

    credentials: StreamCredentials
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    closed: bool = False

    @classmethod
    def open(cls, credentials: StreamCredentials) -> StreamGuard | None:
        """The guard holding a new lease, or None when the user holds the cap already."""
        guard = cls(credentials)
        if not lease_hold(user_id=credentials.user_id, lease_id=guard.lease_id):
            logger.info("streams.too_many", extra={"user_id": credentials.user_id, "slug": credentials.slug})
            return None
        return guard

    def recheck(self) -> StreamVerdict:
        if stream_access_now(self.credentials) is None:
            extra = {"user_id": self.credentials.user_id, "slug": self.credentials.slug}
            logger.info("streams.access_lost", extra=extra)
            return StreamVerdict.ACCESS_LOST
        try:
            held = lease_hold(user_id=self.credentials.user_id, lease_id=self.lease_id)
        except redis.RedisError:  # Redis restarting: the stream stays, the next re-check retries
            logger.warning("streams.lease_refresh_failed", extra={"user_id": self.credentials.user_id}, exc_info=True)
            return StreamVerdict.ALLOWED
        # A lease lost (this process stalled past its TTL) is taken again if the cap allows.
        return StreamVerdict.ALLOWED if held else StreamVerdict.TOO_MANY_STREAMS

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            lease_release(user_id=self.credentials.user_id, lease_id=self.lease_id)
        except redis.RedisError:  # the lease expires by itself
            logger.warning("streams.lease_release_failed", extra={"user_id": self.credentials.user_id}, exc_info=True)
