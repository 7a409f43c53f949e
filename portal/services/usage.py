"""Usage samples of live instances (CPU, memory) for the app page's chart and /metrics.

Host workers measure their guests (vmworker.usage) and send each tick's samples here; this keeps
the last ``SAMPLES_KEPT`` of every instance in Redis (a list per instance, newest first, expiring
``SAMPLE_TTL_S`` after its last sample), never in PostgreSQL: figures that are a few seconds old
and lost on a Redis restart are what they are for.

Samples are hostile input (a guest moves its own figures; a sample names an instance id): a batch
is bounded, a sample is kept only for a live instance placed on the host that sent it, every
figure must be a finite number and is clamped into what that instance can use (``cpu`` in CPUs up
to its vCPUs plus QEMU's own threads, ``mem`` in bytes up to its memory plus QEMU's overhead).
Anything else is dropped; nothing here raises on what a host sends.
"""

from __future__ import annotations

import json
import logging
import math
import uuid

from django.conf import settings

from portal.choices import INSTANCE_ACTIVE
from portal.models import Instance
from portal.shared_redis import channel_layer_redis_url, redis_client

logger = logging.getLogger(__name__)

SAMPLES_KEPT = 40
SAMPLE_TTL_S = 120
BATCH_MAX_SAMPLES = 2000
KEY_PREFIX = "portal:usage:"
CPU_OVERHEAD_CORES = 1.0  # QEMU's main loop and I/O threads count in a domain's CPU time
MEMORY_OVERHEAD_BYTES = 512 * 1024 * 1024  # QEMU's own resident memory beside the guest's
MIB = 1024 * 1024


def _redis():
    return redis_client(settings.USAGE_REDIS_URL or channel_layer_redis_url())


def _key(instance_id) -> str:
    return f"{KEY_PREFIX}{instance_id}"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return value if math.isfinite(value) else None


def _parsed(sample) -> tuple[str, float, float, float] | None:
    if not isinstance(sample, dict):
        return None
    try:
        instance_id = str(uuid.UUID(str(sample.get("instance_id"))[:64]))
    except ValueError:
        return None
    at, cpu, mem = _number(sample.get("t")), _number(sample.get("cpu")), _number(sample.get("mem"))
    if at is None or cpu is None or mem is None:
        return None
    return instance_id, at, cpu, mem


def usage_record(*, host_name: str, samples) -> int:
    """Keeps the samples a host sent (see the module's rules); returns how many were kept."""
    if not isinstance(samples, list):
        return 0
    parsed = [p for p in (_parsed(sample) for sample in samples[:BATCH_MAX_SAMPLES]) if p is not None]
    if not parsed:
        return 0
    limits = {
        str(pk): (vcpus + CPU_OVERHEAD_CORES, memory_mib * MIB + MEMORY_OVERHEAD_BYTES)
        for pk, vcpus, memory_mib in Instance.objects.filter(
            pk__in={p[0] for p in parsed}, host__name=host_name, status__in=INSTANCE_ACTIVE
        ).values_list("pk", "vcpus", "memory_mib")
    }
    pipe = _redis().pipeline(transaction=False)
    kept = 0
    for instance_id, at, cpu, mem in parsed:
        if instance_id not in limits:
            continue
        cpu_max, mem_max = limits[instance_id]
        value = {"t": round(at, 3), "cpu": round(min(max(cpu, 0.0), cpu_max), 4), "mem": int(min(max(mem, 0), mem_max))}
        key = _key(instance_id)
        pipe.lpush(key, json.dumps(value))
        pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
        pipe.expire(key, SAMPLE_TTL_S)
        kept += 1
    if kept:
        pipe.execute()
    return kept


def _loaded(raw) -> dict | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def usage_series(*, instance_ids) -> dict[str, list[dict]]:
    """The kept samples of each instance, oldest first ({"t", "cpu", "mem"}); one round trip."""
    ids = [str(instance_id) for instance_id in instance_ids]
    if not ids:
        return {}
    pipe = _redis().pipeline(transaction=False)
    for instance_id in ids:
        pipe.lrange(_key(instance_id), 0, SAMPLES_KEPT - 1)
    series = {}
    for instance_id, raws in zip(ids, pipe.execute(), strict=True):
        samples = [s for s in (_loaded(raw) for raw in reversed(raws)) if s is not None]
        series[instance_id] = samples
    return series


def usage_latest(*, instance_ids) -> dict[str, dict]:
    """The newest sample of each instance that has one; one round trip."""
    ids = [str(instance_id) for instance_id in instance_ids]
    if not ids:
        return {}
    pipe = _redis().pipeline(transaction=False)
    for instance_id in ids:
        pipe.lindex(_key(instance_id), 0)
    latest = {}
    for instance_id, raw in zip(ids, pipe.execute(), strict=True):
        sample = _loaded(raw) if raw is not None else None
        if sample is not None:
            latest[instance_id] = sample
    return latest
