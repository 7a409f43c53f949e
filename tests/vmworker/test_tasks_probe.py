"""Health probes of the host worker (vmworker.health_probes) against real servers on 127.0.0.1: only
the instance's own ports, redirects are results (never followed), bounded reads and time."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portal.marathon.app_definition import HealthCheck
from vmworker.health_probes import HTTP_PROBE_READ_BYTES, http_probe_status, probe_port


def test_a_check_probes_only_the_instances_own_ports():
    assert probe_port(HealthCheck(protocol="TCP", port_index=1), [31001, 31002]) == (31002, "")
    assert probe_port(HealthCheck(protocol="TCP", port=31001), [31001, 31002]) == (31001, "")
    refused, reason = probe_port(HealthCheck(protocol="TCP", port=6379), [31001])
    assert refused is None and "6379 is not one of the instance's published ports" in reason
    assert probe_port(HealthCheck(protocol="HTTP", port_index=2), [31001])[0] is None


@pytest.fixture
def servers():
    """An instance's port answering 302 to a second (platform) server; what reached each."""
    reached: dict[str, list[str]] = {"instance": [], "platform": []}

    def handler(name: str, location: str | None):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                reached[name].append(self.path)
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    platform = ThreadingHTTPServer(("127.0.0.1", 0), handler("platform", None))
    instance = ThreadingHTTPServer(
        ("127.0.0.1", 0), handler("instance", f"http://127.0.0.1:{platform.server_address[1]}/secret")
    )
    for server in (platform, instance):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield instance.server_address, reached
    for server in (platform, instance):
        server.shutdown()
        server.server_close()


def test_a_redirect_is_the_result_and_is_never_followed(servers):
    address, reached = servers

    assert http_probe_status(address, "/health", tls=False, timeout_s=5) == 302
    assert reached == {"instance": ["/health"], "platform": []}


@pytest.fixture
def raw_server():
    """A TCP server that sends ``payload`` one piece every ``pause_s``."""
    listener = socket.create_server(("127.0.0.1", 0))
    script: dict = {}

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            for piece in script["pieces"]:
                try:
                    connection.sendall(piece)
                except OSError:
                    return
                time.sleep(script["pause_s"])

    def start(pieces, pause_s):
        script.update(pieces=pieces, pause_s=pause_s)
        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()

    yield start
    listener.close()


def test_an_app_answering_a_byte_at_a_time_cannot_hold_the_probe_past_its_timeout(raw_server):
    address = raw_server([b"H"] * 100, 0.1)
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        http_probe_status(address, "/", tls=False, timeout_s=1)

    assert time.monotonic() - started < 1.5


def test_an_endless_answer_is_read_only_up_to_the_bound(raw_server):
    address = raw_server([b"x" * 65536] * 64, 0)

    with pytest.raises(ValueError, match="not HTTP"):
        http_probe_status(address, "/", tls=False, timeout_s=5)
    assert HTTP_PROBE_READ_BYTES <= 4096
