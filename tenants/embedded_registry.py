"""The platform's embedded local registry (the one ``scripts/run`` starts on 127.0.0.1): every
tenant may pull from it, read-only, without adding it as one of its own registries.

Contract: its URL and user come from settings (``PORTAL_EMBEDDED_REGISTRY_URL``,
``PORTAL_EMBEDDED_REGISTRY_USERNAME``); its password only from the 0600 file named by
``PORTAL_EMBEDDED_REGISTRY_PASSWORD_FILE``, read where the pull happens (the host worker, through
``pull_password``). It is never stored in the database, shown on a page, returned by the API,
logged or put in a task's arguments; tenants only ever see its name and host. A tenant that has
its own registry for the same host uses that one (tenants.selectors.registry_for_image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from vmworker.registry_address import platform_hosts

# The Deploy form's choice value for it (a tenant's own registries are chosen by their id).
EMBEDDED_REGISTRY_KEY = "platform"
EMBEDDED_REGISTRY_NAME = "local"


@dataclass(frozen=True)
class EmbeddedRegistry:
    url: str
    username: str
    password_file: Path | None
    name: str = EMBEDDED_REGISTRY_NAME
    pk: str = EMBEDDED_REGISTRY_KEY

    @property
    def host(self) -> str:
        """host[:port] as it appears in image references."""
        return self.url.split("://", 1)[-1].rstrip("/")

    @property
    def insecure(self) -> bool:
        # Plain HTTP: the run command serves it on loopback only.
        return self.url.startswith("http://")

    def pull_password(self) -> str:
        """For a pull, in the worker only."""
        return self.password_file.read_text().strip() if self.password_file else ""


def embedded_registry() -> EmbeddedRegistry | None:
    """The platform registry, or None when this deployment has none."""
    if not settings.EMBEDDED_REGISTRY_URL:
        return None
    password_file = settings.EMBEDDED_REGISTRY_PASSWORD_FILE
    return EmbeddedRegistry(
        url=settings.EMBEDDED_REGISTRY_URL,
        username=settings.EMBEDDED_REGISTRY_USERNAME,
        password_file=Path(password_file) if password_file else None,
    )


def platform_registry_hosts() -> frozenset[str]:
    """ "host:port" of the registries the platform runs or vouches for: the embedded one and
    ``REGISTRY_HOST_ALLOWLIST``. Only these may be on loopback or private addresses
    (vmworker.registry_address)."""
    return platform_hosts(settings.REGISTRY_HOST_ALLOWLIST, settings.EMBEDDED_REGISTRY_URL)
