"""The API's throttles (DRF's, from REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES and _RATES, counted
in the Redis cache) applied to the authenticated Marathon ``/v2`` views, which are plain Django
views: a user has one budget across ``/api/v1`` and ``/v2``. The events stream counts once, when
it is opened. ``/ping`` is not counted: load balancers probe it, and it does no work."""

from __future__ import annotations

from rest_framework.exceptions import Throttled
from rest_framework.settings import api_settings


class _AsUser:
    """The request as DRF's throttles see it: ``user`` is the one the Marathon auth resolved
    (a token's user), not the session's."""

    def __init__(self, request, user):
        self._request = request
        self.user = user

    def __getattr__(self, name):
        return getattr(self._request, name)


def marathon_throttle_check(request, *, user, view) -> None:
    """Raises Throttled (its ``wait`` is the Retry-After) when the caller is over a rate."""
    caller = _AsUser(request, user)
    waits = []
    for throttle_class in api_settings.DEFAULT_THROTTLE_CLASSES:
        throttle = throttle_class()
        if not throttle.allow_request(caller, view):
            waits.append(throttle.wait() or 0)
    if waits:
        raise Throttled(wait=max(waits))
