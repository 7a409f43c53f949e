"""The registry check as a client of tenant-chosen URLs: it connects only to addresses that pass
the platform rule, resolves once, follows no redirect and no realm that fails the rule. Real
HTTP servers on 127.0.0.1 (this test's own), no Django."""

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tenants.registry_check import registry_check
from vmworker import registry_address

TIMEOUT_S = 5


class Listener:
    """Counts the TCP connections made to it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.stopped.set()
    running.sock.close()


def serve(answer) -> ThreadingHTTPServer:
    """A server whose every GET gets ``answer(handler) -> (status, headers, body)``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, headers, body = answer(self)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[list]:
    started: list[ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def endpoint(server) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


def check(url: str, *, allowed: set[str], username: str = "robot", password: str = "pw"):
    return registry_check(
        url=url, username=username, password=password, insecure=True, timeout_s=TIMEOUT_S, allowed=frozenset(allowed)
    )


def test_a_loopback_registry_that_is_not_allowed_is_never_connected_to(listener):
    result = check(f"http://127.0.0.1:{listener.port}", allowed=set())
    assert result.ok is False and "loopback" in result.message
    assert listener.connections == 0


def test_a_redirect_is_not_followed(listener, servers):
    servers.append(serve(lambda h: (302, {"Location": f"http://127.0.0.1:{listener.port}/v2/"}, b"")))
    result = check(f"http://{endpoint(servers[0])}", allowed={endpoint(servers[0]), f"127.0.0.1:{listener.port}"})
    assert result.ok is False and "redirect" in result.message
    assert listener.connections == 0


def test_a_realm_on_another_host_over_plain_http_is_not_followed(listener, servers):
    realm = f"http://localhost:{listener.port}/token"
    servers.append(serve(lambda h: (401, {"WWW-Authenticate": f'Bearer realm="{realm}"'}, b"")))
    allowed = {endpoint(servers[0]), f"localhost:{listener.port}"}
    result = check(f"http://{endpoint(servers[0])}", allowed=allowed)
    assert result.ok is False and "https" in result.message and "realm" in result.message
    assert listener.connections == 0


def test_a_realm_on_the_registrys_own_allowed_endpoint_completes_the_token_flow(servers):
    expected = "Basic " + base64.b64encode(b"robot:pw").decode()

    def answer(handler):
        auth = handler.headers.get("Authorization", "")
        if handler.path.startswith("/token") and auth == expected:
            return 200, {}, json.dumps({"token": "t0k"}).encode()
        if handler.path == "/v2/" and auth == "Bearer t0k":
            return 200, {}, b"{}"
        realm = f"http://{endpoint(servers[0])}/token"
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'}, b""

    servers.append(serve(answer))
    result = check(f"http://{endpoint(servers[0])}", allowed={endpoint(servers[0])})
    assert (result.ok, result.message) == (True, "Registry reachable; credentials accepted.")


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected_to(monkeypatch):
    answers = iter(["93.184.216.34", "127.0.0.1"])  # a rebinding DNS: public first, then loopback
    resolved, connected = [], []

    def getaddrinfo(host, port, **kwargs):
        address = next(answers)
        resolved.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def create_connection(address, timeout):
        connected.append(address)
        raise ConnectionRefusedError("not leaving this machine")

    monkeypatch.setattr(registry_address.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr("tenants.registry_check.socket.create_connection", create_connection)
    result = check("https://rebind.example", allowed=set())
    assert result.ok is False
    assert resolved == ["93.184.216.34"] and connected == [("93.184.216.34", 443)]


@pytest.mark.parametrize(
    "address,public",
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::", False),
        ("93.184.216.34", True),
        ("2606:4700::6810:85e5", True),
    ],
)
def test_the_address_rule(address, public):
    assert registry_address.address_is_public(address) is public


def test_a_registry_dripping_its_answer_cannot_hold_the_check_past_its_deadline():
    """One byte just inside each read timeout, for ever: the whole check still ends at
    DEADLINE_TIMEOUTS x the timeout (before: it read for as long as the server kept dripping)."""
    from tenants.registry_check import DEADLINE_TIMEOUTS

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip():
        conn, _ = server.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
            if stop.wait(0.15):
                break
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    timeout_s = 0.3
    port = server.getsockname()[1]
    started = time.monotonic()
    try:
        result = registry_check(
            url=f"http://127.0.0.1:{port}",
            username="",
            password="",
            insecure=True,
            timeout_s=timeout_s,
            allowed=frozenset({f"127.0.0.1:{port}"}),
        )
    finally:
        stop.set()
        server.close()
    took_s = time.monotonic() - started

    assert result.ok is False and "ran out of time" in result.message, result
    assert took_s < DEADLINE_TIMEOUTS * timeout_s + 1.0, took_s
