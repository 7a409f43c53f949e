"""Which addresses a tenant's registry may make the platform connect to.

Contract: a tenant registry (and the Bearer token service it names) must resolve only to public
addresses: never loopback, private, link-local (cloud metadata), multicast, reserved or
unspecified ones, where the platform's own services listen. The exceptions are "host:port"
entries the platform allows (its embedded registry, ``REGISTRY_HOST_ALLOWLIST``). A name is
resolved once and the caller connects to the very address that passed, so a second DNS answer
cannot send the connection elsewhere (DNS rebinding). Pure: no Django, no I/O but DNS."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(Exception):
    pass


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    special = ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
    special = special or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    return ip.is_global and not special


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, the port made explicit; raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme]


def host_port_key(host: str, port: int) -> str:
    """How allowlist entries name an endpoint: "host:port", IPv6 hosts in brackets."""
    host = host.lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def platform_hosts(allowlist, embedded_registry_url: str) -> frozenset[str]:
    """ "host:port" of the registries the platform runs or vouches for (the only ones that may be
    on loopback or private addresses): its allowlist's entries and its embedded registry."""
    entries = {entry.strip().lower() for entry in allowlist if entry.strip()}
    if embedded_registry_url:
        entries.add(host_port_key(*host_port(embedded_registry_url)))
    return frozenset(entries)


def resolve_allowed(host: str, port: int, *, allowed: frozenset[str]) -> str:
    """The one address to connect to for host:port; raises AddressRefused when the name does not
    resolve or any address it resolves to is not public (and host:port is not allowed)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"{host} does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if host_port_key(host, port) not in allowed:
        refused = [address for address in addresses if not address_is_public(address)]
        if refused:
            where = host if refused[0] == host.strip("[]") else f"{host} resolves to {refused[0]}, which"
            raise AddressRefused(f"{where} is a loopback, private, link-local, multicast or unspecified address")
    return addresses[0]


def check_registry_host(host: str, port: int, *, allowed: frozenset[str]) -> None:
    """At creation time: refuse a registry whose host is, or resolves to, a non-public address.
    A name that does not resolve here is accepted (it may resolve where it is used); every
    connection re-checks through ``resolve_allowed``."""
    try:
        resolve_allowed(host, port, allowed=allowed)
    except AddressRefused as exc:
        if isinstance(exc.__cause__, socket.gaierror | UnicodeError):
            return
        raise


def registry_endpoint(registry_host: str) -> tuple[str, int]:
    """(host, port) of an image reference's registry part ("host[:port]", IPv6 in brackets):
    without a port, the registry is spoken to over https on 443."""
    if registry_host.startswith("["):
        host, _, rest = registry_host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = registry_host.partition(":")
    return host.lower(), int(port) if port.isdigit() else DEFAULT_PORTS["https"]


def check_image_registry(registry_host: str, *, allowed: frozenset[str]) -> None:
    """An image is pulled by a compute host from its reference's registry: that registry must
    pass the same rule as a tenant's registry (a reference like ``127.0.0.1:6390/x`` would make
    the host talk to the platform's own services). Raises AddressRefused."""
    host, port = registry_endpoint(registry_host)
    check_registry_host(host, port, allowed=allowed)
