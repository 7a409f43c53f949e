"""Checks that a registry answers the distribution API (``GET /v2/``) with the given
credentials. Follows one Bearer-token challenge (Docker Hub, Harbor, GitLab...). The password
is used only in the Authorization header of these requests; it is never logged or returned."""

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryCheckResult:
    ok: bool
    message: str


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _open(url: str, headers: dict, *, timeout_s: float, context):
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)
    except urllib.error.HTTPError as exc:
        return exc


def registry_check(*, url: str, username: str, password: str, insecure: bool, timeout_s: float) -> RegistryCheckResult:
    context = ssl._create_unverified_context() if insecure else ssl.create_default_context()  # noqa: S323
    headers = {"Authorization": _basic(username, password)} if username else {}
    try:
        response = _open(url.rstrip("/") + "/v2/", headers, timeout_s=timeout_s, context=context)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status == 401 and challenge.lower().startswith("bearer "):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
            token_response = _open(
                params.get("realm", "") + ("?" + query if query else ""), headers, timeout_s=timeout_s, context=context
            )
            if token_response.status != 200:
                return RegistryCheckResult(
                    False, f"Authentication failed (token service answered {token_response.status})."
                )
            body = json.loads(token_response.read(65536) or b"{}")
            token = body.get("token") or body.get("access_token") or ""
            response = _open(
                url.rstrip("/") + "/v2/", {"Authorization": f"Bearer {token}"}, timeout_s=timeout_s, context=context
            )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return RegistryCheckResult(False, f"Cannot reach the registry: {reason}.")
    if response.status == 200:
        return RegistryCheckResult(
            True, "Registry reachable; credentials accepted." if username else "Registry reachable."
        )
    if response.status == 401:
        return RegistryCheckResult(False, "The registry refused the credentials (401).")
    if response.status == 404:
        return RegistryCheckResult(False, "No registry API at this URL (GET /v2/ answered 404).")
    return RegistryCheckResult(False, f"The registry answered HTTP {response.status}.")
