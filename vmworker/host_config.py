"""A compute host's configuration, from its environment only: the host reads no Django settings.

Each value is read from ``HYPERVM_<NAME>``, else from the ``PORTAL_<NAME>`` the portal reads
for the same thing (one environment serves both sides on a one-machine install such as
./scripts/run; a separate compute host sets the HYPERVM_ names), else its default. Read at each
call (environment lookups, no I/O but the broker password file), so a test that changes the
environment sees it.

The broker: ``HYPERVM_BROKER_URL`` (the whole URL; or the portal's ``PORTAL_CELERY_BROKER_URL``,
``PORTAL_REDIS_URL``), else Redis at ``HYPERVM_REDIS_HOST`` (default
127.0.0.1), ``HYPERVM_REDIS_PORT`` (6390), ``HYPERVM_REDIS_DB`` (0) with the password from the 0600
file ``HYPERVM_REDIS_PASSWORD_FILE`` (/etc/hypervm/redis-password, made by scripts/setup): the
password is never in the environment or on a command line.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from urllib.parse import quote

from vmworker.registry_address import platform_hosts

DEFAULT_PORTAL_QUEUE = "portal"
DEFAULT_REDIS_PASSWORD_FILE = "/etc/hypervm/redis-password"
# The portal's channel layer (portal/settings/base.py channel_layers_for): what a host's console
# and exec agents write to it must reach the same Redis with the same wire format.
CHANNELS_SOCKET_TIMEOUT_S = 15


class HostConfigError(Exception):
    pass


def env(name: str, default: str = "") -> str:
    """``HYPERVM_<name>``, else ``PORTAL_<name>``, else the default."""
    for prefix in ("HYPERVM_", "PORTAL_"):
        value = os.environ.get(prefix + name)
        if value is not None and value != "":
            return value
    return default


def env_float(name: str, default: float) -> float:
    try:
        return float(env(name, str(default)))
    except ValueError as exc:
        raise HostConfigError(f"HYPERVM_{name} / PORTAL_{name} must be a number") from exc


def env_int(name: str, default: int) -> int:
    try:
        return int(env(name, str(default)))
    except ValueError as exc:
        raise HostConfigError(f"HYPERVM_{name} / PORTAL_{name} must be a whole number") from exc


def _private_file(path: Path) -> str:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise HostConfigError(f"{path} must be readable by its owner only (chmod 600)")
        return path.read_text().strip()
    except FileNotFoundError:
        raise HostConfigError(f"{path} is missing: scripts/setup makes it") from None


def broker_url() -> str:
    """The Celery broker this host takes its tasks from and sends its reports to."""
    url = os.environ.get("HYPERVM_BROKER_URL") or os.environ.get("PORTAL_CELERY_BROKER_URL") or env("REDIS_URL")
    if url:
        return url
    password = _private_file(Path(env("REDIS_PASSWORD_FILE", DEFAULT_REDIS_PASSWORD_FILE)))
    host = env("REDIS_HOST", "127.0.0.1")
    return f"redis://:{quote(password, safe='')}@{host}:{env_int('REDIS_PORT', 6390)}/{env_int('REDIS_DB', 0)}"


def channels_url() -> str:
    """The Redis of the portal's channel layer (console and exec streams): ``HYPERVM_CHANNELS_URL``,
    else the portal's ``PORTAL_CHANNELS_REDIS_URL``, else the broker's."""
    return os.environ.get("HYPERVM_CHANNELS_URL") or os.environ.get("PORTAL_CHANNELS_REDIS_URL") or broker_url()


def channel_layer():
    """A channel layer of its own (its connections belong to the event loop that uses it), in the
    portal's wire format, built without Django settings."""
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(
        hosts=[{"address": channels_url(), "socket_timeout": CHANNELS_SOCKET_TIMEOUT_S, "retry": redis_retry()}]
    )


def redis_retry():
    """Reconnect and try again (3 times, 50 ms to 1 s apart) when a pooled Redis connection turns
    out dead: redis-py's asyncio default is not to, so after a Redis restart the first use of each
    pooled connection failed (a WebSocket closed at its group_add). The portal's channel layer
    takes the same (portal/settings/base.py)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    return Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)


def host_key() -> bytes | None:
    """This host's report key (vmworker.report_signing), hex in the 0600 file
    ``HYPERVM_HOST_KEY_FILE`` (``manage.py host_key`` writes it); None without one: the host's
    reports go unsigned, and a portal that requires signatures drops them."""
    path = os.environ.get("HYPERVM_HOST_KEY_FILE")
    if not path:
        return None
    try:
        version = Path(path).stat()
    except FileNotFoundError:
        raise HostConfigError(f"{path} is missing: manage.py host_key writes it") from None
    # Every report and command checks it: the file is read again only when it changed.
    return _key_from_file(path, version.st_ino, version.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _key_from_file(path: str, inode: int, mtime_ns: int) -> bytes:
    try:
        return bytes.fromhex(_private_file(Path(path)))
    except ValueError as exc:
        raise HostConfigError(f"{path} does not hold a hex key") from exc


def ksm_enabled() -> bool:
    """HYPERVM_KSM=1: the host worker turns on kernel same-page merging at start (a pool of paused
    blank VMs shares much of its guest RAM: bench/bench_ksm.py measures it). Off by default: it is
    the whole machine's setting, and merged pages are a side channel between the VMs sharing them."""
    return env("KSM", "0").strip().lower() in ("1", "on", "true", "yes")


def portal_queue() -> str:
    """Where this host's reports go: the portal's queue."""
    return env("CELERY_QUEUE", DEFAULT_PORTAL_QUEUE)


def heartbeat_interval_s() -> float:
    return env_float("HOST_HEARTBEAT_INTERVAL_S", 3.0)


def heartbeat_expiry_s() -> float:
    """A heartbeat older than this is worth nothing (the portal expires the host by then)."""
    return env_float("HOST_HEARTBEAT_EXPIRY_S", 15.0)


def instance_retention_s() -> float:
    """How long an ended instance's folder stays on the host (and how old a boot message may be)."""
    return env_float("HOST_INSTANCE_RETENTION_S", 3600.0)


def image_max_unpacked_bytes() -> int:
    return env_int("IMAGE_MAX_UNPACKED_MIB", 4096) * 1024 * 1024


def exec_max_sessions_per_tenant() -> int:
    return env_int("EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST", 16)


def usage_sample_interval_s() -> float:
    return env_float("USAGE_SAMPLE_INTERVAL_S", 3.0)


def platform_registry_hosts() -> frozenset[str]:
    """ "host:port" of the registries this host may pull from although they are on loopback or
    private addresses: the platform's embedded registry and its allowlist (the portal vouches for
    the same ones: tenants.embedded_registry.platform_registry_hosts)."""
    return platform_hosts(env("REGISTRY_HOST_ALLOWLIST").split(","), env("EMBEDDED_REGISTRY_URL"))
