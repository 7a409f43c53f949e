"""The platform policy for app definitions, built from settings.

Every interface that parses a tenant's definition (the /v2 and /api/v1 APIs, the Deploy form
and its JSON tab) passes ``platform_policy()`` to the pure parser, and the app services check
every definition they store or redeploy against it again (a stored version may predate a
tighter policy)."""

from __future__ import annotations

from django.conf import settings

from portal.marathon.platform_policy import PlatformPolicy


def platform_policy() -> PlatformPolicy:
    first, last = settings.HOST_PORT_RANGE
    return PlatformPolicy(
        host_port_min=first,
        host_port_max=last,
        reserved_host_ports=frozenset(settings.RESERVED_HOST_PORTS),
        **settings.APP_DEFINITION_LIMITS,
    )
