"""Checks that a registry answers the distribution API (``GET /v2/``) with the given
credentials. Follows one Bearer-token challenge (Docker Hub, Harbor, GitLab...). The password
is used only in the Authorization header of these requests; it is never logged or returned.

Contract (a tenant chooses the URL, so the platform must not become its HTTP client for the
platform's own services): every connection goes to an address that passed
vmworker.registry_address at connect time (resolved once, the socket opened to that address);
redirects are never followed; the Bearer ``realm`` is followed only when it passes the same rule
and is https or on the registry's own host; response bodies are read up to a bound."""

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from vmworker.registry_address import AddressRefused, host_port, resolve_allowed

MAX_BODY_BYTES = 64 * 1024
# The whole check (registry, token service, registry again) ends within this many per-read
# timeouts: a server dripping one byte per timeout must not hold a worker for hours.
DEADLINE_TIMEOUTS = 3


@dataclass(frozen=True)
class RegistryCheckResult:
    ok: bool
    message: str


@dataclass(frozen=True)
class _Answer:
    status: int
    challenge: str
    body: bytes


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address`` (already checked) while naming ``host`` in the request."""

    def __init__(self, host: str, port: int, *, address: str, timeout_s: float):
        super().__init__(host, port, timeout=timeout_s)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS verified against ``host`` (SNI and certificate name)."""

    def __init__(self, host: str, port: int, *, address: str, timeout_s: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout_s, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _shut_down(connection: http.client.HTTPConnection) -> None:
    """Wakes a read blocked on the connection (closing alone does not, on Linux)."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _get(
    url: str, headers: dict, *, timeout_s: float, insecure: bool, allowed: frozenset[str], deadline: float
) -> _Answer:
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise TimeoutError("the registry check ran out of time")
    timeout_s = min(timeout_s, remaining_s)
    parts = urlsplit(url)
    host, port = host_port(url)
    address = resolve_allowed(host, port, allowed=allowed)
    if parts.scheme == "https":
        context = ssl._create_unverified_context() if insecure else ssl.create_default_context()  # noqa: S323
        connection = _PinnedHTTPSConnection(host, port, address=address, timeout_s=timeout_s, context=context)
    else:
        connection = _PinnedHTTPConnection(host, port, address=address, timeout_s=timeout_s)
    cut_off = threading.Timer(remaining_s, _shut_down, args=(connection,))
    cut_off.daemon = True
    cut_off.start()
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
        response = connection.getresponse()
        answer = _Answer(response.status, response.getheader("WWW-Authenticate", ""), response.read(MAX_BODY_BYTES))
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline:  # cut off mid-answer by the deadline
            raise TimeoutError("the registry check ran out of time") from exc
        raise
    finally:
        cut_off.cancel()
        connection.close()
    if time.monotonic() >= deadline:
        raise TimeoutError("the registry check ran out of time")
    return answer


def _realm_refusal(realm: str, *, registry_url: str) -> str | None:
    """Why the token service must not be asked, or None."""
    try:
        realm_host, _ = host_port(realm)
        registry_host, _ = host_port(registry_url)
    except ValueError:
        return f"The registry's token service (Bearer realm) is not an http(s) URL: {realm[:100]!r}."
    if urlsplit(realm).scheme != "https" and realm_host != registry_host:
        return "The registry's token service (Bearer realm) must use https or be on the registry's own host."
    return None


def registry_check(
    *, url: str, username: str, password: str, insecure: bool, timeout_s: float, allowed: frozenset[str]
) -> RegistryCheckResult:
    """``allowed``: "host:port" endpoints exempt from the public-address rule (the platform's)."""
    headers = {"Authorization": _basic(username, password)} if username else {}
    registry_api = url.rstrip("/") + "/v2/"
    target = "The registry"
    deadline = time.monotonic() + DEADLINE_TIMEOUTS * timeout_s
    try:
        answer = _get(registry_api, headers, timeout_s=timeout_s, insecure=insecure, allowed=allowed, deadline=deadline)
        if answer.status == 401 and answer.challenge.lower().startswith("bearer "):
            params = dict(re.findall(r'(\w+)="([^"]*)"', answer.challenge))
            realm = params.get("realm", "")
            refusal = _realm_refusal(realm, registry_url=url)
            if refusal:
                return RegistryCheckResult(False, refusal)
            query = urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
            token_url = realm + (("&" if "?" in realm else "?") + query if query else "")
            target = "The registry's token service (Bearer realm)"
            # Unverified TLS was accepted for the registry's own (loopback) host only.
            same_host = host_port(realm)[0] == host_port(url)[0]
            token_answer = _get(
                token_url,
                headers,
                timeout_s=timeout_s,
                insecure=insecure and same_host,
                allowed=allowed,
                deadline=deadline,
            )
            target = "The registry"
            if token_answer.status != 200:
                return RegistryCheckResult(
                    False, f"Authentication failed (token service answered {token_answer.status})."
                )
            body = json.loads(token_answer.body or b"{}")
            token = (body.get("token") or body.get("access_token") or "") if isinstance(body, dict) else ""
            answer = _get(
                registry_api,
                {"Authorization": f"Bearer {token}"},
                timeout_s=timeout_s,
                insecure=insecure,
                allowed=allowed,
                deadline=deadline,
            )
    except AddressRefused as exc:
        return RegistryCheckResult(False, f"{target} is not reachable from the platform: {exc}.")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return RegistryCheckResult(False, f"Cannot reach the registry: {exc}.")
    if answer.status == 200:
        return RegistryCheckResult(
            True, "Registry reachable; credentials accepted." if username else "Registry reachable."
        )
    if answer.status == 401:
        return RegistryCheckResult(False, "The registry refused the credentials (401).")
    if answer.status == 404:
        return RegistryCheckResult(False, "No registry API at this URL (GET /v2/ answered 404).")
    if 300 <= answer.status < 400:
        return RegistryCheckResult(False, f"The registry answered a redirect (HTTP {answer.status}); not followed.")
    return RegistryCheckResult(False, f"The registry answered HTTP {answer.status}.")
