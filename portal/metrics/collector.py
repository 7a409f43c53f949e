"""The platform's figures as Prometheus metric families, computed when ``/metrics`` is scraped.

Every figure is an aggregate PostgreSQL computes (GROUP BY, FILTER, one CTE for the phase
histograms): a fixed number of queries whatever the number of hosts, apps and instances, never
one per row. Live figures that are not in the database come from Redis in one pipelined round
trip each: the newest usage sample of every live instance (portal.services.usage), the API
request counters (portal.metrics.requests) and the Celery queue lengths (the broker's lists).

Series per instance cover live instances only; ended ones are counted per app and status
(``hypervm_app_instances_ended_total``), so the output is bounded by what runs, not by history.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Func, IntegerField, Q, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from portal.choices import INSTANCE_ACTIVE, INSTANCE_TERMINAL, HostState, InstanceStatus
from portal.metrics.requests import DURATION_BUCKETS_S, request_figures
from portal.models import App, ComputeHost, Instance, Volume
from portal.services.usage import usage_latest
from portal.shared_redis import redis_client

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# Few buckets: the histogram is per app and phase, by far the most series of a scrape.
PHASE_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
# Each boot phase lasts from when it was entered until the next phase of the timeline was.
BOOT_PHASES = ("pulling", "preparing", "booting", "running")
_TIMELINE = ("pulling", "preparing", "booting", "running", "healthy")
# kombu's Redis transport keeps a queue's tasks of priority n > 0 in "<queue>\x06\x16<n>".
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _phase_histogram_sql() -> str:
    # NULLIF: an empty stamp reads as never entered, as portal.phases reads it.
    stamps = ", ".join(f"NULLIF(phase_times->>'{name}', '')::timestamptz AS {name}" for name in _TIMELINE)
    durations = " UNION ALL ".join(
        f"SELECT app_id, '{phase}' AS phase, "
        f"EXTRACT(EPOCH FROM COALESCE({', '.join(_TIMELINE[i + 1 :])}) - {phase}) AS s FROM stamped"
        for i, phase in enumerate(BOOT_PHASES)
    )
    buckets = ", ".join(f"COUNT(*) FILTER (WHERE s <= {le})" for le in PHASE_BUCKETS_S)
    return (
        f"WITH stamped AS (SELECT app_id, {stamps} FROM {Instance._meta.db_table}), "
        f"durations AS ({durations}) "
        f"SELECT app_id, phase, {buckets}, COUNT(*), SUM(s) FROM durations "
        "WHERE s IS NOT NULL AND s >= 0 GROUP BY app_id, phase"
    )


# hypervm_host_<key>, labelled by host.
_HOST_GAUGES = (
    ("up", "1 while the host heartbeats, 0 once it went down"),
    ("heartbeat_age_seconds", "Seconds since the host's last heartbeat"),
    ("vms", "Live instances (VMs) placed on the host"),
    ("cpu_allocated_vcpus", "vCPUs its live instances claim"),
    ("cpu_used_cores", "CPUs its VMs kept busy (newest samples)"),
    ("memory_capacity_bytes", "Host memory"),
    ("memory_allocated_bytes", "Memory its live instances claim"),
    ("memory_used_bytes", "Resident memory of its VMs (newest samples)"),
    ("ports_in_use", "Published host ports its live instances hold"),
    ("ports_blocked", "Ports placement skips: held by programs outside the platform"),
    ("volumes", "Persistent volumes in the host's storage pool"),
    ("volume_size_bytes", "Size of the persistent volumes in its pool"),
    ("volume_used_bytes", "Blocks its pool's volumes hold, as the host last saw"),
)


@dataclass(frozen=True)
class _AppLabels:
    tenant: str
    app: str


def _volumes_by_host() -> dict[int, dict]:
    rows = Volume.objects.filter(host__isnull=False).values("host_id")
    rows = rows.annotate(count=Count("pk"), size_mib=Sum("size_mib"), used_bytes=Sum("used_bytes", default=0))
    return {row["host_id"]: row for row in rows}


def _hosts() -> tuple[list, dict[int, int]]:
    live = Q(instances__status__in=INSTANCE_ACTIVE)
    hosts = list(
        ComputeHost.objects.annotate(
            allocated_vcpus=Sum("instances__vcpus", filter=live, default=0),
            allocated_memory_mib=Sum("instances__memory_mib", filter=live, default=0),
            vms=Count("instances", filter=live),
        ).order_by("name")
    )
    ports = (
        Instance.objects.filter(status__in=INSTANCE_ACTIVE, host__isnull=False)
        .annotate(published=Func(F("host_ports"), function="jsonb_array_length", output_field=IntegerField()))
        .values("host_id")
        .annotate(ports=Sum("published"))
    )
    return hosts, {row["host_id"]: row["ports"] or 0 for row in ports}


def _apps() -> dict[int, tuple[_AppLabels, int | None, int]]:
    rows = App.objects.filter(deleting=False).values_list(
        "pk",
        "tenant__slug",
        "marathon_id",
        "current_version__definition__app__instances",
        "launch_failures",
    )
    return {
        pk: (_AppLabels(slug, marathon_id), desired if isinstance(desired, int) else None, failures)
        for pk, slug, marathon_id, desired, failures in rows
    }


def _phase_histograms() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(_phase_histogram_sql())
        return cursor.fetchall()


def _queue_lengths(queues: list[str]) -> dict[str, int]:
    client = redis_client(settings.CELERY_BROKER_URL)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in _PRIORITY_SUFFIXES) for queue in queues}


class PlatformCollector(Collector):
    def collect(self):
        now = timezone.now()
        hosts, ports_by_host = _hosts()
        apps = _apps()
        live = list(
            Instance.objects.filter(status__in=INSTANCE_ACTIVE, app__deleting=False).values_list(
                "pk", "app_id", "host__name", "status", "health__alive"
            )
        )
        # Redis (samples, API counters, the broker) may be away: the database's figures still go out.
        redis_figures = []
        try:
            latest = usage_latest(instance_ids=[row[0] for row in live])
            redis_figures += [*self._queue_families(hosts), *self._request_families()]
        except redis.RedisError:
            logger.warning("metrics.redis_unavailable", exc_info=True)
            latest, redis_figures = {}, []
        yield from self._host_families(now, hosts, ports_by_host, live, latest)
        yield from self._app_families(apps)
        yield from self._instance_families(apps, live, latest)
        yield from redis_figures
        redis_up = GaugeMetricFamily(
            "hypervm_metrics_redis_up",
            "1 when this scrape read Redis; 0: usage, API request and Celery queue figures are left out",
        )
        redis_up.add_metric([], 1 if redis_figures else 0)
        yield redis_up

    # -- hosts ----------------------------------------------------------------------------------

    def _host_families(self, now, hosts, ports_by_host, live, latest):
        used_cpu: dict[str, float] = defaultdict(float)
        used_memory: dict[str, int] = defaultdict(int)
        for pk, _app, host_name, *_rest in live:
            sample = latest.get(str(pk))
            if sample is not None and host_name:
                used_cpu[host_name] += float(sample.get("cpu", 0))
                used_memory[host_name] += int(sample.get("mem", 0))
        low, high = settings.HOST_PORT_RANGE
        families = {
            key: GaugeMetricFamily(f"hypervm_host_{key}", documentation, labels=["host"])
            for key, documentation in _HOST_GAUGES
        }
        families["cpu_capacity_vcpus"] = GaugeMetricFamily(
            "hypervm_host_cpu_capacity_vcpus", "Host CPUs", labels=["host", "virt_type"]
        )
        port_pool = GaugeMetricFamily("hypervm_host_port_pool_size", "Ports in the published-port range")
        port_pool.add_metric([], high - low + 1)
        volumes = _volumes_by_host()
        for host in hosts:
            name = host.name
            storage = volumes.get(host.pk, {"count": 0, "size_mib": 0, "used_bytes": 0})
            families["volumes"].add_metric([name], storage["count"])
            families["volume_size_bytes"].add_metric([name], storage["size_mib"] * MIB)
            families["volume_used_bytes"].add_metric([name], storage["used_bytes"])
            families["up"].add_metric([name], 1 if host.state == HostState.UP else 0)
            families["heartbeat_age_seconds"].add_metric([name], max((now - host.last_heartbeat_at).total_seconds(), 0))
            families["vms"].add_metric([name], host.vms)
            families["cpu_capacity_vcpus"].add_metric([name, host.virt_type], host.vcpus)
            families["cpu_allocated_vcpus"].add_metric([name], host.allocated_vcpus)
            families["cpu_used_cores"].add_metric([name], round(used_cpu[name], 4))
            families["memory_capacity_bytes"].add_metric([name], host.memory_mib * MIB)
            families["memory_allocated_bytes"].add_metric([name], host.allocated_memory_mib * MIB)
            families["memory_used_bytes"].add_metric([name], used_memory[name])
            families["ports_in_use"].add_metric([name], ports_by_host.get(host.pk, 0))
            families["ports_blocked"].add_metric([name], len(host.blocked_ports or {}))
        yield from families.values()
        yield port_pool

    # -- apps -----------------------------------------------------------------------------------

    def _app_families(self, apps):
        counts = (
            Instance.objects.filter(app__deleting=False)
            .values("app_id", "status")
            .annotate(n=Count("pk"), restarts=Count("pk", filter=Q(restart_of__isnull=False)))
        )
        instances = GaugeMetricFamily(
            "hypervm_app_instances", "Live instances by status", labels=["tenant", "app", "status"]
        )
        ended = CounterMetricFamily(
            "hypervm_app_instances_ended", "Instances that ended, by how", labels=["tenant", "app", "status"]
        )
        restarts = CounterMetricFamily(
            "hypervm_app_restarts",
            "Instances started to replace another (restarts, replacements)",
            labels=["tenant", "app"],
        )
        desired = GaugeMetricFamily(
            "hypervm_app_instances_desired", "Instances the app asks for", labels=["tenant", "app"]
        )
        failures = GaugeMetricFamily(
            "hypervm_app_launch_failures", "Consecutive failed launches (the launch backoff)", labels=["tenant", "app"]
        )
        restart_totals: dict[int, int] = defaultdict(int)
        for row in counts:
            if row["app_id"] not in apps:  # deleted between the two queries
                continue
            labels = apps[row["app_id"]][0]
            restart_totals[row["app_id"]] += row["restarts"]
            if row["status"] in INSTANCE_TERMINAL:
                ended.add_metric([labels.tenant, labels.app, row["status"]], row["n"])
            else:
                instances.add_metric([labels.tenant, labels.app, row["status"]], row["n"])
        for pk, (labels, wanted, launch_failures) in apps.items():
            restarts.add_metric([labels.tenant, labels.app], restart_totals[pk])
            desired.add_metric([labels.tenant, labels.app], wanted or 0)
            failures.add_metric([labels.tenant, labels.app], launch_failures)
        yield from (instances, ended, restarts, desired, failures)
        yield self._phase_family(apps)

    def _phase_family(self, apps):
        family = HistogramMetricFamily(
            "hypervm_app_boot_phase_duration_seconds",
            "How long instances spent in each boot phase (until the next phase was entered)",
            labels=["tenant", "app", "phase"],
        )
        for app_id, phase, *figures in _phase_histograms():
            if app_id not in apps:
                continue
            labels = apps[app_id][0]
            *in_buckets, count, total = figures
            buckets = [(str(le), n) for le, n in zip(PHASE_BUCKETS_S, in_buckets, strict=True)]
            family.add_metric([labels.tenant, labels.app, phase], [*buckets, ("+Inf", count)], float(total or 0))
        return family

    # -- instances ------------------------------------------------------------------------------

    def _instance_families(self, apps, live, latest):
        names = ["tenant", "app", "instance"]
        info = GaugeMetricFamily(
            "hypervm_instance_info", "A live instance: its host and status", labels=[*names, "host", "status"]
        )
        healthy = GaugeMetricFamily(
            "hypervm_instance_healthy", "1 healthy, 0 failing its health checks (checked instances only)", labels=names
        )
        cpu = GaugeMetricFamily("hypervm_instance_cpu_used_cores", "CPUs it kept busy (newest sample)", labels=names)
        memory = GaugeMetricFamily(
            "hypervm_instance_memory_used_bytes", "Its VM's resident memory (newest sample)", labels=names
        )
        for pk, app_id, host_name, status, alive in live:
            app = apps.get(app_id)
            if app is None:
                continue
            labels = [app[0].tenant, app[0].app, str(pk)]
            info.add_metric([*labels, host_name or "", status], 1)
            if alive is not None and status in (InstanceStatus.HEALTHY, InstanceStatus.UNHEALTHY):
                healthy.add_metric(labels, 1 if status == InstanceStatus.HEALTHY else 0)
            sample = latest.get(str(pk))
            if sample is not None:
                cpu.add_metric(labels, float(sample.get("cpu", 0)))
                memory.add_metric(labels, int(sample.get("mem", 0)))
        yield from (info, healthy, cpu, memory)

    # -- Celery and the API ---------------------------------------------------------------------

    def _queue_families(self, hosts):
        queues = sorted({settings.CELERY_TASK_DEFAULT_QUEUE, *(host.queue for host in hosts)})
        family = GaugeMetricFamily("hypervm_celery_queue_length", "Tasks waiting in the queue", labels=["queue"])
        for queue, length in _queue_lengths(queues).items():
            family.add_metric([queue], length)
        yield family

    def _request_families(self):
        figures = request_figures()
        requests = CounterMetricFamily(
            "hypervm_api_requests", "API requests answered", labels=["api", "method", "route", "status"]
        )
        for labels, count in sorted(figures.counts.items()):
            requests.add_metric(list(labels), count)
        durations = HistogramMetricFamily(
            "hypervm_api_request_duration_seconds", "Time to answer an API request", labels=["api", "method"]
        )
        for (api, method), in_buckets in sorted(figures.buckets.items()):
            cumulative, buckets = 0, []
            for le in DURATION_BUCKETS_S:
                cumulative += in_buckets.get(str(le), 0)
                buckets.append((str(le), cumulative))
            buckets.append(("+Inf", cumulative + in_buckets.get("+Inf", 0)))
            durations.add_metric([api, method], buckets, figures.sums.get((api, method), 0.0))
        yield from (requests, durations)


def metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector())
    return registry
