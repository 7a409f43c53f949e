"""Test helpers around the platform's registry server (tenants.registry_server): the tests start
throwaway registries on free loopback ports and allowlist them for the platform."""

from __future__ import annotations

import os

from tenants.registry_server import (  # noqa: F401  (re-exported for the tests)
    LocalRegistry,
    RegistryStartError,
    start_registry,
    stop_registry,
)

PLATFORM_ALLOWLIST_ENV = "PORTAL_REGISTRY_HOST_ALLOWLIST"


def platform_allowlist_add(host_port: str) -> None:
    """Puts a test registry (on 127.0.0.1, where tenant registries are refused otherwise) on the
    platform's registry allowlist: in this process's settings and in the environment, which the
    processes started after this (the live stack) inherit."""
    entries = [entry for entry in os.environ.get(PLATFORM_ALLOWLIST_ENV, "").split(",") if entry]
    if host_port not in entries:
        entries.append(host_port)
    os.environ[PLATFORM_ALLOWLIST_ENV] = ",".join(entries)
    from django.conf import settings

    if settings.configured:
        settings.REGISTRY_HOST_ALLOWLIST = sorted({*settings.REGISTRY_HOST_ALLOWLIST, host_port.lower()})
