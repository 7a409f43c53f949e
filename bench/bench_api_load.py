"""Benchmark of issue 12: API latency under load from several tenants' Marathon clients.

Not a test: prints figures. Uses the dev database (throw-away tenants, removed at the end), the
web server (daphne, production settings, over loopback only) and one portal worker; no VM is
booted (the deploys are zero-instance apps, then deleted). Locust (bench/locust_api.py) drives
it headless, bounded in time and users:

0. warm-up: one client for 5 s, not counted;
1. baseline: one client alone for --seconds;
2. load: --tenants x --users-per-tenant clients at once for --seconds.

Prints per request kind the count, failures, p50 and p99 (ms) of both runs and the load/baseline
ratio; the target is reads p99 <= 100 ms under load on this machine.

    python -m bench.bench_api_load [--tenants 5] [--users-per-tenant 2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from bench.stack import ROOT, bench_stack  # noqa: E402
from tenants.models import Tenant  # noqa: E402
from tenants.services import api_token_create, tenant_create  # noqa: E402


def run_locust(url: str, env: dict, users: int, seconds: int, csv_prefix: Path) -> dict[str, dict]:
    argv = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locust_api.py"), "--headless"]
    argv += ["-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(csv_prefix)]
    argv += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"]
    subprocess.run(argv, cwd=ROOT, env=env, check=False, timeout=seconds + 120, capture_output=True)
    failures = Path(f"{csv_prefix}_failures.csv")
    if failures.exists():
        for row in list(csv.DictReader(failures.open()))[:5]:
            print(f"  failed: {row['Name']}: {row['Error'][:300]} (x{row['Occurrences']})")
    rows = {}
    with open(f"{csv_prefix}_stats.csv") as handle:
        for row in csv.DictReader(handle):
            rows[row["Name"]] = row
    return rows


def figures(row: dict) -> tuple[int, int, float, float]:
    return int(row["Request Count"]), int(row["Failure Count"]), float(row["50%"]), float(row["99%"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--users-per-tenant", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    if not (1 <= args.tenants <= 50 and 1 <= args.users_per_tenant <= 10 and 5 <= args.seconds <= 300):
        parser.error("bounded: 1-50 tenants, 1-10 users each, 5-300 s")

    env = {
        "DJANGO_SETTINGS_MODULE": "portal.settings.prod",
        "PORTAL_HTTPS": "0",
        # The throttle stays on (its Redis counters are part of every request), set above this load.
        "PORTAL_API_THROTTLE_USER_RATE": "1000000/minute",
    }
    with bench_stack("load", "Load", env) as stack:
        stack.start_worker(concurrency=2)
        url = stack.start_web()
        owners, tenants = [], []
        lines = []
        try:
            for index in range(args.tenants):
                owner = get_user_model().objects.create(username=f"{stack.name}-t{index}")
                tenant = tenant_create(
                    actor=stack.user, slug=f"{stack.name}-t{index}", name=f"Load {index}", owner=owner
                )
                owners.append(owner)
                tenants.append(tenant)
                _, key = api_token_create(user=owner, name="load", tenant=tenant)
                lines.append(f"{tenant.slug} {key}")
            tokens_file = stack.scratch / "tokens"
            fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(lines) + "\n")
            locust_env = os.environ | {
                "HYPERVM_LOAD_TOKENS_FILE": str(tokens_file),
                "HYPERVM_LOAD_IMAGE": stack.image,
            }
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/login/", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            users = args.tenants * args.users_per_tenant
            print(
                f"portal {url}; {args.tenants} tenants; baseline 1 client, load {users} clients; {args.seconds} s each"
            )
            run_locust(url, locust_env, 1, 5, stack.scratch / "warmup")  # first requests, caches: not counted
            baseline = run_locust(url, locust_env, 1, args.seconds, stack.scratch / "baseline")
            load = run_locust(url, locust_env, users, args.seconds, stack.scratch / "load")
        finally:
            Tenant.objects.filter(pk__in=[t.pk for t in tenants]).delete()
            get_user_model().objects.filter(pk__in=[o.pk for o in owners]).delete()

    header = f"{'request':46} {'base n':>7} {'p50':>6} {'p99':>6} | {'load n':>7} {'fail':>5} {'p50':>6} {'p99':>6}"
    print(f"{header} {'p99 x':>6}")
    for name in sorted(load):
        if name not in baseline:
            continue
        b_count, _, b_p50, b_p99 = figures(baseline[name])
        l_count, l_fail, l_p50, l_p99 = figures(load[name])
        ratio = l_p99 / b_p99 if b_p99 else float("nan")
        print(
            f"{name:46} {b_count:7d} {b_p50:6.0f} {b_p99:6.0f} | {l_count:7d} {l_fail:5d} {l_p50:6.0f} {l_p99:6.0f} "
            f"{ratio:6.2f}"
        )
    reads_p99 = max(figures(row)[3] for name, row in load.items() if name.startswith("read "))
    print(f"reads p99 under load (worst read kind): {reads_p99:.0f} ms (target <= 100 ms)")


if __name__ == "__main__":
    main()
