"""API request figures: every web process counts the API requests it answers (``/api/v1/`` and
the Marathon ``/v2/``) into Redis hashes, so a scrape of any process sees the sum over all of them
and a restart loses nothing.

Labels are bounded by the URL configuration, never by what a client sends: ``api`` (v1 or
marathon), ``method`` (the standard ones, else "other"), ``route`` (the matched URL pattern, e.g.
``v2/apps/<path:app_id>``, or "unmatched") and ``status`` (the code). Durations go into a histogram
per api and method. Counting is one pipelined round trip; when Redis fails, counting pauses for
``PAUSE_AFTER_ERROR_S`` instead of slowing every request by a timeout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings

from portal.shared_redis import channel_layer_redis_url, redis_client

logger = logging.getLogger(__name__)

COUNTS_KEY = "portal:metrics:requests"
DURATIONS_KEY = "portal:metrics:request-seconds"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
API_PREFIXES = (("/api/v1/", "v1"), ("/v2/", "marathon"))
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PAUSE_AFTER_ERROR_S = 10.0
SEPARATOR = "\x1f"  # in no route, method or status

_paused_until = 0.0


def _redis():
    return redis_client(settings.USAGE_REDIS_URL or channel_layer_redis_url())


def api_of(path: str) -> str | None:
    return next((name for prefix, name in API_PREFIXES if path.startswith(prefix)), None)


def request_record(*, api: str, method: str, route: str, status: int, duration_s: float) -> None:
    global _paused_until
    if time.monotonic() < _paused_until:
        return
    method = method if method in METHODS else "other"
    bucket = next((str(le) for le in DURATION_BUCKETS_S if duration_s <= le), "+Inf")
    pipe = _redis().pipeline(transaction=False)
    pipe.hincrby(COUNTS_KEY, SEPARATOR.join((api, method, route, str(status))), 1)
    pipe.hincrby(DURATIONS_KEY, SEPARATOR.join((api, method, bucket)), 1)
    pipe.hincrbyfloat(DURATIONS_KEY, SEPARATOR.join((api, method, "sum")), max(duration_s, 0.0))
    try:
        pipe.execute()
    except redis.RedisError:
        _paused_until = time.monotonic() + PAUSE_AFTER_ERROR_S
        logger.warning("metrics.request_count_failed", exc_info=True)


def _record_response(request, api: str, response, started: float) -> None:
    match = getattr(request, "resolver_match", None)
    request_record(
        api=api,
        method=request.method,
        route=(match.route if match is not None and match.route else "unmatched")[:200],
        status=response.status_code,
        duration_s=time.perf_counter() - started,
    )


class ApiRequestMetricsMiddleware:
    """Counts every API request with its route, status and duration (see the module). Sync and
    async capable, so under ASGI it keeps the chain async (no thread hop of its own)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        api = api_of(request.path)
        if api is None:
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _record_response(request, api, response, started)
        return response

    async def _acall(self, request):
        api = api_of(request.path)
        if api is None:
            return await self.get_response(request)
        started = time.perf_counter()
        response = await self.get_response(request)
        # redis-py blocks: off the event loop, and off the thread sync views share.
        await sync_to_async(_record_response, thread_sensitive=False)(request, api, response, started)
        return response


@dataclass(frozen=True)
class RequestFigures:
    counts: dict[tuple[str, str, str, str], int]  # (api, method, route, status) -> requests
    buckets: dict[tuple[str, str], dict[str, int]]  # (api, method) -> {le: requests in that bucket}
    sums: dict[tuple[str, str], float]  # (api, method) -> seconds


def request_figures() -> RequestFigures:
    pipe = _redis().pipeline(transaction=False)
    pipe.hgetall(COUNTS_KEY)
    pipe.hgetall(DURATIONS_KEY)
    raw_counts, raw_durations = pipe.execute()
    counts = {}
    for field, value in raw_counts.items():
        parts = field.decode(errors="replace").split(SEPARATOR)
        if len(parts) == 4:
            counts[tuple(parts)] = int(value)
    buckets: dict[tuple[str, str], dict[str, int]] = {}
    sums: dict[tuple[str, str], float] = {}
    for field, value in raw_durations.items():
        parts = field.decode(errors="replace").split(SEPARATOR)
        if len(parts) != 3:
            continue
        api, method, le = parts
        if le == "sum":
            sums[(api, method)] = float(value)
        else:
            buckets.setdefault((api, method), {})[le] = int(value)
    return RequestFigures(counts=counts, buckets=buckets, sums=sums)
