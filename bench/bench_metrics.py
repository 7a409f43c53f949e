"""Benchmark of issue 13: what one /metrics scrape costs on a big platform.

Not a test: prints figures. Fills the test database (PORTAL_TEST_DB_NAME, made if missing, kept)
with 10 compute hosts, 20 tenants, 500 apps and 2000 instances (running, healthy, booting and
ended ones, with boot-phase times and published ports), a usage sample in Redis for every live
instance and some API request counts, all inside one transaction that is rolled back at the end
(the Redis keys are deleted). Then scrapes /metrics in-process (Django's test client, the scrape
token) and prints the median time, the size plain and gzipped, the series count and the number
of SQL queries a scrape makes.

    source scripts/setup  # the database role and its password, as the tests get them
    python -m bench.bench_metrics [--hosts 10] [--apps 500] [--instances-per-app 4] [--repeats 9]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import statistics
import time
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.test")
django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from portal.choices import InstanceStatus  # noqa: E402
from portal.marathon import parse_app_definition  # noqa: E402
from portal.metrics.requests import COUNTS_KEY, DURATIONS_KEY, request_record  # noqa: E402
from portal.models import App, AppVersion, ComputeHost, Instance  # noqa: E402
from portal.services.usage import KEY_PREFIX, _redis, usage_record  # noqa: E402
from tenants.models import Quota, Tenant  # noqa: E402

TOKEN = "bench-metrics-scrape-token"
MIB = 1024 * 1024
LIVE = (InstanceStatus.RUNNING, InstanceStatus.HEALTHY, InstanceStatus.HEALTHY, InstanceStatus.BOOTING)
ENDED = (InstanceStatus.STOPPED, InstanceStatus.FAILED)


def fill(*, hosts: int, apps: int, per_app: int, rng: random.Random) -> list[Instance]:
    now = timezone.now()
    host_rows = ComputeHost.objects.bulk_create(
        ComputeHost(
            name=f"bench-h{n}",
            queue=f"host.bench-h{n}",
            libvirt_uri="qemu:///system",
            vcpus=64,
            memory_mib=262144,
            virt_type="kvm",
            last_heartbeat_at=now,
        )
        for n in range(hosts)
    )
    tenants = Tenant.objects.bulk_create(Tenant(slug=f"bench-t{n}", name=f"Bench {n}") for n in range(20))
    Quota.objects.bulk_create(Quota(tenant=tenant) for tenant in tenants)
    app_rows = App.objects.bulk_create(
        App(tenant=tenants[n % len(tenants)], marathon_id=f"/bench/app-{n}") for n in range(apps)
    )
    versions = AppVersion.objects.bulk_create(
        AppVersion(
            app=app,
            version="2026-12-05T00:00:00.000Z",
            definition=parse_app_definition(
                {
                    "id": app.marathon_id,
                    "instances": per_app,
                    "cpus": 1,
                    "mem": 128,
                    "container": {"docker": {"image": "r/x:1"}},
                }
            ).to_stored(),
        )
        for app in app_rows
    )
    for app, version in zip(app_rows, versions, strict=True):
        app.current_version = version
    App.objects.bulk_update(app_rows, ["current_version"])
    instances = []
    port = 20000
    for app, version in zip(app_rows, versions, strict=True):
        for n in range(per_app):
            status = ENDED[n % 2] if n == per_app - 1 and app.pk % 5 == 0 else LIVE[n % len(LIVE)]
            start = now - timedelta(minutes=30, seconds=rng.uniform(0, 600))
            stamps, moment = {}, start
            for phase in ("pulling", "preparing", "booting", "running", "healthy"):
                stamps[phase] = moment.isoformat()
                moment += timedelta(seconds=rng.uniform(0.05, 4))
                if phase == "booting" and status == InstanceStatus.BOOTING:
                    break
            port += 1
            instances.append(
                Instance(
                    tenant_id=app.tenant_id,
                    app=app,
                    version=version,
                    host=host_rows[(app.pk + n) % hosts],
                    status=status,
                    vcpus=1,
                    memory_mib=128,
                    host_ports=[port],
                    phase_times=stamps,
                    health={"alive": True} if status == InstanceStatus.HEALTHY else {},
                )
            )
    return Instance.objects.bulk_create(instances)


def sample_usage(instances: list[Instance], rng: random.Random) -> None:
    by_host: dict[str, list[dict]] = {}
    for instance in instances:
        if instance.status in ENDED:
            continue
        sample = {"instance_id": str(instance.pk), "t": time.time(), "cpu": rng.uniform(0, 1), "mem": 200 * MIB}
        by_host.setdefault(instance.host.name, []).append(sample)
    for host_name, samples in by_host.items():
        usage_record(host_name=host_name, samples=samples)
    for n in range(300):
        api = ("v1", "marathon")[n % 2]
        request_record(api=api, method="GET", route=f"bench/route-{n % 30}", status=200, duration_s=rng.uniform(0, 0.2))


def clean_redis() -> None:
    client = _redis()
    for key in client.scan_iter(f"{KEY_PREFIX}*"):
        client.delete(key)
    client.delete(COUNTS_KEY, DURATIONS_KEY)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--instances-per-app", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, keepdb=True)
    settings.METRICS_SCRAPE_TOKEN = TOKEN
    rng = random.Random(13)
    client = Client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with transaction.atomic():
            instances = fill(hosts=args.hosts, apps=args.apps, per_app=args.instances_per_app, rng=rng)
            sample_usage(instances, rng)
            live = sum(i.status not in ENDED for i in instances)
            client.get("/metrics", headers=headers)  # warm: imports, the first connection to Redis
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                response = client.get("/metrics", headers=headers)
                times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
            with CaptureQueriesContext(connection) as captured:
                client.get("/metrics", headers=headers)
            body = response.content
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            print(f"platform: {args.hosts} hosts, {args.apps} apps, {len(instances)} instances ({live} live)")
            median_ms, low_ms, high_ms = (statistics.median(times) * 1000, min(times) * 1000, max(times) * 1000)
            print(f"scrape median {median_ms:.0f} ms (min {low_ms:.0f}, max {high_ms:.0f}, {args.repeats} scrapes)")
            print(f"size {len(body) / 1024:.0f} KiB, gzip {len(gzip.compress(body)) / 1024:.0f} KiB, {series} series")
            print(f"SQL queries per scrape: {len(captured.captured_queries)}")
            transaction.set_rollback(True)
    finally:
        clean_redis()


if __name__ == "__main__":
    main()
