"""WebSocket and SSE streams of the running portal, driven as a tenant (or a tenant's published
app page) would: the live daphne, a real WebSocket client and raw HTTP.

- A stream that uses the session cookie opens only from the portal's exact origin (scheme, host
  and port) or a trusted one: a tenant's app (on the apps' publish address, or any other port of
  the portal's host) gets a 403 on the handshake, a session POST from it a CSRF 403, and
  /v2/events with the session a 403.
- A token-authenticated /v2/events stream ends within a few seconds of the token's revocation
  (or deletion), the membership's removal or the user's deactivation.
- One user holds at most MAX_STREAMS_PER_USER open streams, WebSockets and SSE together: the next
  is refused (WS close 4429, HTTP 429) until one closes.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import websocket
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from portal.models import App, Event
from tenants.choices import TenantRole
from tenants.models import ApiToken, Membership
from tenants.services import api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_END_S = 6.0  # a revoked stream must end within this (the re-check runs every 2 s)
CLOSE_TOO_MANY_STREAMS = 4429
CSRF_SECRET = "a" * 32  # a CSRF cookie a page of the portal would hold; the header carries the same


def tenant_app_origin() -> str:
    """The origin of a tenant's published app: a port of the platform's range on the address apps
    are published on (the portal has a host of its own: tests/security/test_cookies.py)."""
    return f"http://{settings.APP_PUBLISH_HOST_IP}:{settings.HOST_PORT_RANGE[0] + 1}"


def portal_port(stack) -> int:
    return urlsplit(stack.url).port


def portal_host(stack) -> str:
    return urlsplit(stack.url).hostname


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def viewer(tenant, member_of):
    return member_of(tenant, TenantRole.VIEWER)


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


# -- clients -----------------------------------------------------------------------------------------


def ws_open(stack, path: str, *, cookie: str | None, origin: str | None) -> websocket.WebSocket:
    """A WebSocket to the live portal; raises WebSocketBadStatusException when the handshake is refused."""
    url = stack.url.replace("http://", "ws://") + path
    return websocket.create_connection(url, timeout=5, cookie=cookie, origin=origin, suppress_origin=origin is None)


def ws_handshake_status(stack, path: str, *, cookie: str | None, origin: str | None) -> int:
    try:
        socket_ = ws_open(stack, path, cookie=cookie, origin=origin)
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    socket_.close()
    return 101


def ws_next(socket_: websocket.WebSocket, timeout_s: float) -> tuple[str, object] | None:
    """("close", code) or ("message", json) for the next frame; None when nothing came in time."""
    socket_.settimeout(timeout_s)
    try:
        while True:
            opcode, data = socket_.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return "close", int.from_bytes(data[:2], "big")
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return "message", json.loads(data)
    except websocket.WebSocketTimeoutException:
        return None
    except websocket.WebSocketConnectionClosedException:
        return "close", None


class SseStream:
    """GET /v2/events over a raw socket (``Connection: close``: the end of the stream is the end
    of the connection)."""

    def __init__(self, stack, headers: dict[str, str]):
        port = portal_port(stack)
        self.sock = socket.create_connection((portal_host(stack), port), timeout=5)
        lines = [
            "GET /v2/events HTTP/1.1",
            f"Host: {portal_host(stack)}:{port}",
            "Accept: text/event-stream",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.received = b""
        self.ended = False
        while b"\r\n\r\n" not in self.received and not self.ended:
            self._read(timeout_s=5)
        head, _, _ = self.received.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.decode("latin1").partition(":") for line in head.split(b"\r\n")[1:])
        }

    def _read(self, timeout_s: float) -> None:
        self.sock.settimeout(timeout_s)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        except ConnectionError:
            chunk = b""
        if chunk:
            self.received += chunk
        else:
            self.ended = True

    def wait_for(self, needle: bytes, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while needle not in self.received and not self.ended and time.monotonic() < deadline:
            self._read(timeout_s=0.2)
        return needle in self.received

    def ended_within(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ended and time.monotonic() < deadline:
            self._read(timeout_s=0.2)
        return self.ended

    @property
    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]

    def close(self) -> None:
        self.sock.close()


def token_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


# -- row 3: the origin of a session-authenticated stream ---------------------------------------------


def refused_origins(stack) -> dict[str, str | None]:
    host, port = portal_host(stack), portal_port(stack)
    return {
        "a tenant's published app": tenant_app_origin(),
        "the portal's host, another port": f"http://{host}:{port + 1}",
        "the portal's host and port, another scheme": f"https://{host}:{port}",
        "the portal's port, another host name": f"http://localhost:{port}",
        "an opaque origin (sandboxed frame, file:)": "null",
        "no Origin header": None,
    }


def test_a_session_websocket_opens_only_from_the_portals_exact_origin(live_stack, tenant, viewer):
    Event.objects.create(tenant=tenant, kind="status_update_event", data={"taskId": "t1"})
    cookie = session_cookie(viewer)
    path = f"/ws/t/{tenant.slug}/?after=0"

    statuses = {
        name: ws_handshake_status(live_stack, path, cookie=cookie, origin=origin)
        for name, origin in refused_origins(live_stack).items()
    }
    assert statuses == dict.fromkeys(statuses, 403), f"handshake statuses by Origin: {statuses}"

    own = ws_open(live_stack, path, cookie=cookie, origin=live_stack.url)
    try:
        kind, message = ws_next(own, timeout_s=5)
        assert (kind, message["type"], message["data"]) == ("message", "event", {"taskId": "t1"})
    finally:
        own.close()


class TenantAppPage(BaseHTTPRequestHandler):
    """A tenant's published app: one page whose script opens the portal's WebSocket."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>tenant app</title><p>hello</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def bind_in_platform_range() -> ThreadingHTTPServer:
    """The page served from a free port of the platform's range (other test sessions' apps may
    hold some), as the tenant's published app would be."""
    low, high = settings.HOST_PORT_RANGE
    for port in random.sample(range(low, high + 1), 50):
        try:
            return ThreadingHTTPServer(("127.0.0.1", port), TenantAppPage)
        except OSError:
            continue
    raise AssertionError("no free port in the platform's range")


@contextmanager
def tenant_app_server():
    server = bind_in_platform_range()
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


OPEN_SOCKET_JS = """(url) => new Promise((resolve) => {
  const socket = new WebSocket(url);
  const messages = [];
  let opened = false;
  socket.onopen = () => { opened = true; };
  socket.onmessage = (event) => { messages.push(JSON.parse(event.data)); socket.close(); };
  socket.onclose = (event) => resolve({opened, messages});
  setTimeout(() => { socket.close(); }, 8000);
})"""


@pytest.mark.browser
def test_a_tenant_app_page_visited_by_a_member_cannot_read_the_portals_socket(live_stack, tenant, viewer, page):
    """Row 3 as it happens: a member logged in to the portal visits a tenant's app in the same
    browser; the app's script opens the portal's WebSocket (the browser sends the member's cookie)."""
    Event.objects.create(tenant=tenant, kind="status_update_event", data={"taskId": "secret-task"})
    page.context.add_cookies(
        [{"name": "sessionid", "value": session_cookie(viewer).partition("=")[2], "url": live_stack.url}]
    )
    ws_url = live_stack.url.replace("http://", "ws://") + f"/ws/t/{tenant.slug}/?after=0"
    with tenant_app_server() as app_url:
        page.goto(app_url + "/")
        from_tenant_app = page.evaluate(OPEN_SOCKET_JS, ws_url)
    page.goto(live_stack.url + "/login/")  # the portal's own page: the same script reads the event
    from_portal = page.evaluate(OPEN_SOCKET_JS, ws_url)
    assert from_tenant_app == {"opened": False, "messages": []}, from_tenant_app
    assert from_portal["opened"] and from_portal["messages"][0]["data"] == {"taskId": "secret-task"}


def test_a_session_post_from_a_tenant_app_origin_fails_the_csrf_check(live_stack, tenant, developer):
    """Django's CSRF check compares the Origin exactly (scheme://host:port): the tenant's app page
    cannot post with the member's session even holding a valid CSRF token pair."""
    headers = {
        "Cookie": f"{session_cookie(developer)}; csrftoken={CSRF_SECRET}",
        "X-CSRFToken": CSRF_SECRET,
        "Content-Type": "application/json",
    }
    body = json.dumps(
        {
            "id": "/from-tenant-app",
            "cmd": "sleep 1",
            "cpus": 0.1,
            "mem": 64,
            "instances": 0,
            "container": {"type": "DOCKER", "docker": {"image": "demo/hello:latest"}},
        }
    )
    refused = http_request(live_stack, "POST", "/v2/apps", headers | {"Origin": tenant_app_origin()}, body)
    own = http_request(live_stack, "POST", "/v2/apps", headers | {"Origin": live_stack.url}, body)
    assert refused[0] == 403 and b"CSRF" in refused[1], refused
    assert own[0] == 201, own  # the same request from the portal's own page passes the check
    assert list(App.objects.filter(tenant=tenant).values_list("marathon_id", flat=True)) == ["/from-tenant-app"]

    # The REST API (DRF's session authentication runs the same check): no token minted.
    token_body = json.dumps({"name": "minted-by-a-tenant-app"})
    refused = http_request(live_stack, "POST", "/api/v1/tokens/", headers | {"Origin": tenant_app_origin()}, token_body)
    own = http_request(live_stack, "POST", "/api/v1/tokens/", headers | {"Origin": live_stack.url}, token_body)
    assert refused[0] == 403 and b"CSRF" in refused[1], refused
    assert own[0] == 201, own
    assert list(ApiToken.objects.filter(user=developer).values_list("name", flat=True)) == ["minted-by-a-tenant-app"]


def http_request(stack, method: str, path: str, headers: dict[str, str], body: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(portal_host(stack), portal_port(stack), timeout=10)
    try:
        connection.request(method, path, body=body.encode(), headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_v2_events_with_the_session_is_refused_from_another_origin(live_stack, tenant, viewer):
    cookie = session_cookie(viewer)
    statuses = {}
    for name, origin in refused_origins(live_stack).items():
        if origin is None:
            continue  # a same-origin GET carries no Origin: allowed, as below
        stream = SseStream(live_stack, {"Cookie": cookie, "Origin": origin})
        statuses[name] = stream.status
        assert "access-control-allow-origin" not in stream.headers
        stream.close()
    assert statuses == dict.fromkeys(statuses, 403), f"/v2/events statuses by Origin: {statuses}"

    for headers in ({"Cookie": cookie, "Origin": live_stack.url}, {"Cookie": cookie}):
        stream = SseStream(live_stack, headers)
        try:
            assert stream.status == 200 and stream.wait_for(b"event_stream_attached", timeout_s=5)
            assert "access-control-allow-origin" not in stream.headers
        finally:
            stream.close()


# -- the access of an open stream is checked again ---------------------------------------------------


def revoke(how: str, token: ApiToken, tenant) -> None:
    if how == "token revoked":
        api_token_revoke(user=token.user, token=token)
    elif how == "token deleted":
        token.delete()
    elif how == "membership removed":
        Membership.objects.filter(tenant=tenant, user=token.user).delete()
    else:
        get_user_model().objects.filter(pk=token.user_id).update(is_active=False)


@pytest.mark.parametrize("how", ["token revoked", "token deleted", "membership removed", "user deactivated"])
def test_a_v2_event_stream_ends_within_seconds_of_losing_access(live_stack, tenant, developer, how):
    token, key = api_token_create(user=developer, name="events", tenant=tenant)
    stream = SseStream(live_stack, token_headers(key))
    try:
        assert stream.status == 200 and stream.wait_for(b"event_stream_attached", timeout_s=5)
        revoke(how, token, tenant)
        started = time.monotonic()
        ended = stream.ended_within(STREAM_END_S)
        assert ended, f"/v2/events still open {STREAM_END_S} s after: {how}"
        print(f"/v2/events ended {time.monotonic() - started:.2f} s after: {how}")  # the figure, with -s
    finally:
        stream.close()


# -- streams per user ---------------------------------------------------------------------------------


def test_streams_per_user_are_capped_across_websockets_and_sse(live_stack, tenant, developer):
    cap = settings.MAX_STREAMS_PER_USER
    cookie = session_cookie(developer)
    _, key = api_token_create(user=developer, name="events", tenant=tenant)
    ws_path = f"/ws/t/{tenant.slug}/"
    open_ws = partial(ws_open, live_stack, ws_path, cookie=cookie, origin=live_stack.url)
    open_sse = partial(SseStream, live_stack, token_headers(key))

    with ExitStack() as streams:
        sockets = []
        for _ in range(cap // 2):
            sockets.append(open_ws())
            streams.callback(sockets[-1].close)
        sse = []
        for _ in range(cap - cap // 2):
            sse.append(open_sse())
            streams.callback(sse[-1].close)
            assert sse[-1].status == 200 and sse[-1].wait_for(b"event_stream_attached", timeout_s=5)
        assert [ws_next(s, timeout_s=0.1) for s in sockets] == [None] * len(sockets)  # all open

        one_too_many = open_ws()
        streams.callback(one_too_many.close)
        assert ws_next(one_too_many, timeout_s=5) == ("close", CLOSE_TOO_MANY_STREAMS)
        refused_sse = open_sse()
        streams.callback(refused_sse.close)
        assert refused_sse.status == 429, refused_sse.received[:300]
        refused_sse.ended_within(5)
        body = refused_sse.body
        assert f"at most {cap} open streams" in json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])["message"]

        sockets[0].close()  # a freed lease is taken at once
        replacement = open_ws()
        streams.callback(replacement.close)
        assert ws_next(replacement, timeout_s=STREAM_END_S / 2) is None
        sse[0].close()
        deadline = time.monotonic() + STREAM_END_S
        while True:
            again = open_sse()
            streams.callback(again.close)
            if again.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status == 200, again.received[:300]
