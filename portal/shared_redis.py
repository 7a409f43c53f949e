"""The Redis the portal keeps small shared, short-lived state in (stream leases, usage samples):
the channel layer's, unless a setting names another. Never the only copy of anything that
matters (see ARCHITECTURE: Redis is at-most-once); reads and writes time out within seconds."""

import threading
from functools import cache, cached_property

import redis
from django.conf import settings
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

REDIS_TIMEOUT_S = 2.0


def channel_layer_redis_url() -> str:
    host = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    return host["address"] if isinstance(host, dict) else host


@cache
def redis_client(url: str) -> redis.Redis:
    """One client (a connection pool) per URL and process."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # A dead pooled connection (Redis restarted) is reconnected and the command tried again.
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, retry=retry
    )


class ProcessRedisCache(RedisCache):
    """Django's Redis cache (the API throttles' counters) with one connection pool per process.

    Django keeps a cache object per request context, and so does its Redis client's pool: under
    ASGI every request then opened (and authenticated) a new Redis connection for its throttle
    check. The client, and its pool, is shared by every request of the process instead
    (redis-py's pools are thread-safe)."""

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _CACHE_CLIENTS_LOCK:
            if key not in _CACHE_CLIENTS:
                _CACHE_CLIENTS[key] = self._class(self._servers, **self._options)
            return _CACHE_CLIENTS[key]


_CACHE_CLIENTS: dict[tuple, RedisCacheClient] = {}
_CACHE_CLIENTS_LOCK = threading.Lock()
