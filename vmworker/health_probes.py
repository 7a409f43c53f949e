"""Health probes a compute host runs for the portal: what one probe is, and running it.

Contract: the portal decides which probes are due and judges their results
(portal.services.health); the host only runs each probe it was sent, against the instance's own
published ports on its publish address or inside the guest, and reports (alive, cause). Pure
but for the sockets: no Django.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmworker.runtime_types import RuntimeFailure

PROBE_KINDS = frozenset({"http", "https", "tcp", "command"})
# Marathon's timeoutSeconds is capped by the API's policy; a probe never waits longer than this.
PROBE_TIMEOUT_MAX_S = 300.0
# What an HTTP probe reads of an answer: its status line only (a 3xx is a result, never followed).
HTTP_PROBE_READ_BYTES = 4096
HTTP_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: |\r|\n|$)")


@dataclass(frozen=True)
class HealthProbe:
    """One probe as the portal sent it (portal.services.health.health_probe_message)."""

    kind: str  # http | https | tcp | command
    path: str | None = None
    port: int | None = None
    port_index: int | None = None
    command: str | None = None
    timeout_s: float = 20

    @classmethod
    def from_message(cls, message: dict) -> HealthProbe:
        kind = str(message["protocol"])
        if kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe {kind!r}")
        port = message.get("port")
        port_index = message.get("port_index")
        return cls(
            kind=kind,
            path=None if message.get("path") is None else str(message["path"]),
            port=None if port is None else int(port),
            port_index=None if port_index is None else int(port_index),
            command=None if message.get("command") is None else str(message["command"]),
            timeout_s=max(0.1, min(float(message["timeout_s"]), PROBE_TIMEOUT_MAX_S)),
        )


def run_probe(
    probe: HealthProbe, *, host_ports: list[int], publish_ip: str, exec_check: Callable[[str, float], int]
) -> tuple[bool, str]:
    """(healthy, cause). COMMAND runs inside the guest (``exec_check``: exit 0 = healthy);
    HTTP/HTTPS/TCP go to one of the instance's own published ports on the host's publish
    address, and nowhere else: a check naming another port fails without a connection, so a
    health check is never a port scanner or an HTTP client for the host."""
    if probe.kind == "command":
        try:
            code = exec_check(probe.command or "", probe.timeout_s)
        except RuntimeFailure as exc:
            return False, f"command check failed: {exc}"
        return code == 0, f"command exited with code {code}"
    host_port, refusal = probe_port(probe, host_ports)
    if host_port is None:
        return False, refusal
    address = (publish_ip, host_port)
    if probe.kind == "tcp":
        try:
            with socket.create_connection(address, timeout=probe.timeout_s):
                return True, ""
        except OSError as exc:
            return False, f"TCP connect failed: {exc}"
    try:
        code = http_probe_status(address, probe.path or "/", tls=probe.kind == "https", timeout_s=probe.timeout_s)
    except (OSError, ValueError) as exc:
        return False, f"HTTP request failed: {exc}"
    return 200 <= code < 400, f"HTTP {code}"


def probe_port(check, host_ports: list[int]) -> tuple[int | None, str]:
    """The host port a check may probe (None and why not): Marathon's ``port`` only when it is
    one of the instance's own published ports, else the one at ``portIndex``."""
    own = [int(port) for port in host_ports]
    if check.port is not None:
        if check.port not in own:
            return None, f"port {check.port} is not one of the instance's published ports {own}: not probed"
        return check.port, ""
    index = check.port_index or 0
    if not 0 <= index < len(own):
        return None, "the health check has no port to probe"
    return own[index], ""


def http_probe_status(address: tuple[str, int], path: str, *, tls: bool, timeout_s: float) -> int:
    """GET ``path`` and the answer's status code, within ``timeout_s`` in all (an app that
    answers a byte at a time cannot hold a probe thread longer). Redirects are results, never
    followed; at most HTTP_PROBE_READ_BYTES are read. HTTPS is not verified (as Marathon: the
    app's certificate is its own business; the address is the instance's port)."""
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise ValueError(f"bad path {path!r}")
    deadline = time.monotonic() + timeout_s
    request = f"GET {path} HTTP/1.0\r\nHost: {address[0]}:{address[1]}\r\nUser-Agent: hypervm-health\r\n"
    with socket.create_connection(address, timeout=timeout_s) as raw:
        connection = raw
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw.settimeout(max(0.01, deadline - time.monotonic()))
            connection = context.wrap_socket(raw, server_hostname=None)
        connection.sendall(f"{request}Connection: close\r\n\r\n".encode("ascii", "strict"))
        answer = b""
        while b"\n" not in answer and len(answer) < HTTP_PROBE_READ_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no status line within the timeout")
            connection.settimeout(remaining)
            chunk = connection.recv(HTTP_PROBE_READ_BYTES - len(answer))
            if not chunk:
                break
            answer += chunk
    match = HTTP_STATUS_LINE.match(answer)
    if match is None:
        raise ValueError("the answer is not HTTP")
    return int(match.group(1))
