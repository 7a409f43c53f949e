"""The API's throttles (DRF's, from REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES and _RATES, counted
in the Redis cache) applied to the Marathon ``/v2`` views, which are plain Django views: a user
(or, unauthenticated, a client address) has one budget across ``/api/v1`` and ``/v2``. The
events stream counts once, when it is opened."""

from __future__ import annotations

from types import SimpleNamespace

from rest_framework.exceptions import Throttled
from rest_framework.settings import api_settings


def marathon_throttle_check(request, *, user, view) -> None:
    """Raises Throttled (its ``wait`` is the Retry-After) when the caller is over a rate."""
    # DRF's throttles read only .user and .META of the request they are given.
    caller = SimpleNamespace(user=user, META=request.META)
    waits = []
    for throttle_class in api_settings.DEFAULT_THROTTLE_CLASSES:
        throttle = throttle_class()
        if not throttle.allow_request(caller, view):
            waits.append(throttle.wait() or 0)
    if waits:
        raise Throttled(wait=max(waits))
