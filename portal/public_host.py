"""The portal's public address and the one rule about it: the portal is never served on the host
where tenants' apps are published.

Contract:

- Cookies are scoped by host, not by port (RFC 6265 §8.5). Host workers publish tenants' apps on
  APP_PUBLISH_HOST_IP (``HYPERVM_PUBLISH_HOST_IP``, 127.0.0.1 by default) at ports of
  HOST_PORT_RANGE. Served on that host too, the portal would have a member's browser send its
  session and CSRF cookies to every tenant app the member visits (the tenant collects a session),
  and let a tenant app's page set cookies the portal reads (a session of the tenant's choosing, a
  CSRF secret it knows). So the portal has a host of its own: PUBLIC_URL (``PORTAL_PUBLIC_URL``,
  default ``http://127.0.0.2:8000``; all of 127.0.0.0/8 is loopback), from which ALLOWED_HOSTS
  and the trusted origins are derived (portal.settings.base). Apps are published on 127.0.0.1
  only, so 127.0.0.2:<app port> does not even connect.
- The portal refuses to start (system check ``portal.E001``: every management command, and
  portal.asgi before daphne serves) when its public host, or a host it also answers for
  (ALLOWED_HOSTS, ``portal.E002``), is the publish address or resolves to it; an unspecified
  publish address (0.0.0.0, ::) publishes on every address, so no host of the machine is
  separate. A public URL that is not ``http(s)://host[:port]`` is ``portal.E003``.
- A compute host publishing on such an address is not registered either (host workers run no
  system check, and each may have its own HYPERVM_PUBLISH_HOST_IP): portal.services.hosts.
- This module imports nothing of Django at import time: the settings read it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PUBLIC_URL = "http://127.0.0.2:8000"
DEFAULT_APP_PUBLISH_HOST_IP = "127.0.0.1"
CHECK_IDS = {"public_host": "portal.E001", "allowed_host": "portal.E002", "public_url": "portal.E003"}


@dataclass(frozen=True)
class PublicUrl:
    scheme: str
    host: str  # lower case; an IPv6 address without brackets
    port: int

    @property
    def host_header(self) -> str:
        """The host as a Host header (and ALLOWED_HOSTS) spells it."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> str:
        default_port = {"http": 80, "https": 443}[self.scheme]
        suffix = "" if self.port == default_port else f":{self.port}"
        return f"{self.scheme}://{self.host_header}{suffix}"


def public_url_parse(url: str) -> PublicUrl:
    """``scheme://host[:port]`` (a trailing ``/`` allowed); ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http or https URL")
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{url!r} names no host (or has a user in it)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a path, query or fragment; the portal is served at a host's root")
    port = parts.port  # ValueError for a bad port
    return PublicUrl(parts.scheme, parts.hostname.lower(), port or {"http": 80, "https": 443}[parts.scheme])


def public_origin(url: str) -> str | None:
    """The public URL's origin, or None for a URL the system check reports."""
    try:
        return public_url_parse(url).origin
    except ValueError:
        return None


def host_addresses(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` is or resolves to (nothing when it does not resolve)."""
    try:
        return {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}


def shares_publish_address(host: str, publish_ip: str) -> bool:
    """Whether a browser visiting ``host`` would share cookies with apps published on ``publish_ip``."""
    publish = ipaddress.ip_address(publish_ip)
    if publish.is_unspecified or host == "*":
        return True
    return publish in host_addresses(host.lstrip("."))  # ".example.org" covers example.org too


def public_host_conflict(public: PublicUrl, publish_ip: str) -> str | None:
    """Why apps published on ``publish_ip`` would share the portal's cookies, or None."""
    if not shares_publish_address(public.host, publish_ip):
        return None
    return (
        f"The portal's public host {public.host} is the address tenants' apps are published on "
        f"({publish_ip}, HYPERVM_PUBLISH_HOST_IP) or resolves to it: browsers would send the portal's "
        "session and CSRF cookies to every tenant app, and accept cookies those apps set. "
        f"Serve the portal on a host of its own (PORTAL_PUBLIC_URL, default {DEFAULT_PUBLIC_URL})."
    )


def public_host_problems(*, public_url: str, allowed_hosts: list[str], publish_ip: str) -> list[tuple[str, str]]:
    """(check id, message) for every way the portal would share its cookies with tenants' apps."""
    try:
        public = public_url_parse(public_url)
    except ValueError as error:
        return [(CHECK_IDS["public_url"], f"PORTAL_PUBLIC_URL: {error}.")]
    problems = []
    if conflict := public_host_conflict(public, publish_ip):
        problems.append((CHECK_IDS["public_host"], conflict))
    for host in allowed_hosts:
        if host.lower() != public.host_header and shares_publish_address(host.lower(), publish_ip):
            problems.append(
                (
                    CHECK_IDS["allowed_host"],
                    f"ALLOWED_HOSTS (PORTAL_ALLOWED_HOSTS) lets the portal answer as {host}, which is or covers "
                    f"the address tenants' apps are published on ({publish_ip}): a browser on that host would share "
                    "the portal's cookies with tenant apps. Leave it out.",
                )
            )
    return problems


def check_public_host(app_configs=None, **kwargs) -> list:
    """Django system check (registered in portal.apps)."""
    from django.conf import settings
    from django.core.checks import Error

    problems = public_host_problems(
        public_url=settings.PUBLIC_URL, allowed_hosts=settings.ALLOWED_HOSTS, publish_ip=settings.APP_PUBLISH_HOST_IP
    )
    return [Error(message, id=check_id) for check_id, message in problems]


def refuse_to_start_if_shared() -> None:
    """For servers that run no management command (daphne portal.asgi): the same check, fatal."""
    from django.core.management.base import SystemCheckError

    errors = check_public_host()
    if errors:
        raise SystemCheckError("\n".join(f"{error.id}: {error.msg}" for error in errors))


if __name__ == "__main__":
    # scripts/run: "host port" of PORTAL_PUBLIC_URL, the web server's default bind.
    import os
    import sys

    try:
        parsed = public_url_parse(os.environ.get("PORTAL_PUBLIC_URL", DEFAULT_PUBLIC_URL))
    except ValueError as error:
        sys.exit(f"PORTAL_PUBLIC_URL: {error}")
    print(parsed.host, parsed.port)
