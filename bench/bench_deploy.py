"""Benchmarks of issues 4 and 11: deploy overhead, cold vs warm (pooled) starts, 20 apps at once.

Not a test: prints figures. Uses the dev database (a throw-away tenant, removed at the end),
its own registry on 127.0.0.1, one compute-host worker (portal + host queue, with a warm pool
of one 1x128 VM: HYPERVM_WARM_POOL=1x128:1) and beat.

1. runtime, cold vs warm side by side (issue 11): the runtime boots the HTTP image with a
   published port until the page answers (polled from the start), cold (a fresh VM) and warm
   (claiming a paused blank VM booted beforehand, untimed); ``boot()`` call -> app exec'd (the
   host's "task received -> exec"); QEMU CPU seconds per start (warm: only what the claim and
   the app's start added to the paused VM); RSS of a paused pooled VM's QEMU, with the TCG
   translation cache at the designer's 32 MiB and at 8 MiB.
2. portal, cold vs warm: a Marathon definition through ``app_create`` until the page answers,
   once with the host's pool ready (warm) and at once again (the pool is empty: cold).
3. ``--apps N`` (default 0: skipped): the host worker restarted with a pool of N (``--pool``,
   default N) 1x128 VMs; once it is full, one app submitted -> running (the baseline), then, with
   the pool full again, N one-instance apps submitted at once -> all running; the ratio of the two,
   how many started warm, and the same N apps with the pool off (cold) for comparison.

    python -m bench.bench_deploy [--repeats 3] [--apps 0] [--pool N] [--skip-single]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")
# 20 one-vCPU VMs on a 2-core host: allow that much overcommit (TCG guests mostly idle once up).
os.environ.setdefault("PORTAL_CPU_ALLOCATION_RATIO", "16")
django.setup()

from django.db import close_old_connections  # noqa: E402

from bench.qemu_proc import qemu_cpu_s, qemu_rss_mib  # noqa: E402
from bench.stack import bench_stack  # noqa: E402
from portal.choices import INSTANCE_ACTIVE, InstanceStatus  # noqa: E402
from portal.marathon import parse_app_definition  # noqa: E402
from portal.models import App, Instance  # noqa: E402
from portal.services.apps import app_create, app_delete  # noqa: E402
from tenants.models import Quota  # noqa: E402
from tests.support.live_stack import free_port  # noqa: E402
from vmworker import warm_pool  # noqa: E402
from vmworker.driver.host import Host  # noqa: E402
from vmworker.driver.spec import PortForward  # noqa: E402
from vmworker.images import RegistryCredentials  # noqa: E402
from vmworker.runtime import HyperVMRuntime, InstanceSpec, RuntimeSettings  # noqa: E402

TIMEOUT_S = 600
SHAPE = warm_pool.Shape(1, 128)  # what app_json asks for (0.1 CPU -> 1 vCPU, 128 MiB)
RSS_SETTLE_S = 2.0


def wait_page(port: int, started: float) -> float:
    """Polls from the moment the deploy starts, as a client would. A connection made while the
    guest is not up yet hangs in QEMU's user network until the guest answers its SYN, so each
    try gives up after 0.2 s and the next one starts (both paths alike)."""
    while time.monotonic() - started < TIMEOUT_S:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.2).read()
            return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing answered on {port}")


def app_json(image: str, app_id: str) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 128,
        "container": {"docker": {"image": image}, "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
        "networks": [{"mode": "container/bridge"}],
    }


def deploy_until_page(access, image: str, app_id: str, *, kind: bool = False):
    """Seconds to the page; with ``kind``, also "warm" or "cold" (its timings have ``claim``)."""
    started = time.monotonic()
    app_create(access=access, definition=parse_app_definition(app_json(image, app_id)))
    instance = Instance.objects.filter(app__marathon_id=app_id, app__tenant=access.tenant).first()
    elapsed = wait_page(instance.host_ports[0], started)
    deadline = time.monotonic() + 30
    while True:  # the host reports the timings with the running state, just after the page
        instance.refresh_from_db()
        if instance.timings_s or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    start = "warm" if "claim" in instance.timings_s else "cold"
    print(
        f"  {app_id}: page after {elapsed:.2f} s ({start}); phases {instance.phase_times}; "
        f"timings {instance.timings_s}",
        flush=True,
    )
    return (elapsed, start) if kind else elapsed


def delete_all(access) -> None:
    for app in App.objects.filter(tenant=access.tenant, deleting=False):
        app_delete(access=access, app=app, force=True)
    deadline = time.monotonic() + TIMEOUT_S
    while App.objects.filter(tenant=access.tenant).exists() and time.monotonic() < deadline:
        close_old_connections()
        time.sleep(0.5)


def runtime_boot_until_page(runtime: HyperVMRuntime, spec: InstanceSpec, port: int) -> tuple[float, float, object]:
    """(deploy -> page, boot() call -> app exec'd, BootResult), polled as the portal's client would."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:

        def boot():
            result = runtime.boot(spec)
            return result, time.monotonic() - started

        future = pool.submit(boot)
        elapsed = wait_page(port, started)
        result, to_exec = future.result()
    return elapsed, to_exec, result


def pooled_rss(runtime: HyperVMRuntime, tb_cache_mib: int) -> float:
    pool_id = warm_pool.boot_blank(runtime, SHAPE, tb_cache_mib=tb_cache_mib)
    time.sleep(RSS_SETTLE_S)
    rss = qemu_rss_mib(f"hvm-{pool_id}")
    warm_pool.discard(runtime, pool_id)
    return rss


def runtime_cold_vs_warm(scratch: Path, image: str, credentials, repeats: int) -> None:
    settings = RuntimeSettings(state_dir=scratch / "runtime")
    cold_rt = HyperVMRuntime(settings)
    warm_rt = HyperVMRuntime(dataclasses.replace(settings, warm_pool=True))
    rows = {"cold": [], "warm": []}
    blank_cpu, pooled_rss_pool = [], []
    for index in range(repeats + 1):
        for kind in ("cold", "warm"):
            port = free_port()
            spec = InstanceSpec(
                image=image, credentials=credentials, tls_verify=False, ports=(PortForward("127.0.0.1", port, 8080),)
            )
            cpu_before = 0.0
            if kind == "warm":
                pool_id = warm_pool.boot_blank(warm_rt, SHAPE)
                time.sleep(RSS_SETTLE_S)
                cpu_before = qemu_cpu_s(f"hvm-{pool_id}")
                rss = qemu_rss_mib(f"hvm-{pool_id}")
                if index:
                    blank_cpu.append(cpu_before)
                    pooled_rss_pool.append(rss)
            runtime = warm_rt if kind == "warm" else cold_rt
            elapsed, to_exec, result = runtime_boot_until_page(runtime, spec, port)
            assert result.start == kind, f"a {kind} run started {result.start}"
            cpu_s = qemu_cpu_s(result.domain_name) - cpu_before
            print(
                f"  runtime {kind}: page after {elapsed:.2f} s, exec after {to_exec:.2f} s, "
                f"QEMU CPU {cpu_s:.2f} s; timings {result.timings_s}",
                flush=True,
            )
            runtime.remove(spec.instance_id)
            if index:  # the first round warms caches
                rows[kind].append((elapsed, to_exec, cpu_s))
    rss_8 = [pooled_rss(warm_rt, 8) for _ in range(2)]

    def med(kind: str, column: int) -> float:
        return statistics.median(row[column] for row in rows[kind])

    print(f"runtime, cold vs warm (medians of {repeats}):")
    print(f"  {'':28} {'cold':>8} {'warm':>8} {'warm/cold':>10}")
    for label, column in (
        ("deploy -> page answers (s)", 0),
        ("boot() -> app exec'd (s)", 1),
        ("QEMU CPU s per start", 2),
    ):
        cold, warm = med("cold", column), med("warm", column)
        print(f"  {label:28} {cold:8.2f} {warm:8.2f} {warm / cold:9.0%}")
    print(
        f"  blank VM boot to paused (refill cost, off the deploy path): QEMU CPU {statistics.median(blank_cpu):.2f} s"
    )
    print(
        f"  RSS per paused pooled VM (1 vCPU, 128 MiB): {statistics.median(pooled_rss_pool):.1f} MiB "
        f"with the designer's tb-cache (the runs above); {statistics.median(rss_8):.1f} MiB with 8 MiB; "
        f"runs {pooled_rss_pool} / {rss_8}"
    )


def wait_pool_ready(state_dir: Path, count: int = 1) -> None:
    probe = HyperVMRuntime(RuntimeSettings(state_dir=state_dir), host=Host("qemu:///system"))
    deadline = time.monotonic() + TIMEOUT_S
    while len(warm_pool.ready_vms(probe)) < count:
        assert time.monotonic() < deadline, "the host's pool never filled"
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--apps", type=int, default=0)
    parser.add_argument("--pool", type=int, default=None, help="pool size for --apps (default: --apps)")
    parser.add_argument("--skip-single", action="store_true", help="only the --apps run")
    args = parser.parse_args()

    pool_env = {"DJANGO_SETTINGS_MODULE": "portal.settings.dev", "HYPERVM_WARM_POOL": f"{SHAPE.label}:1"}
    with bench_stack("deploy", "Benchmark", pool_env) as stack:
        tenant, access, image, scratch = stack.tenant, stack.access, stack.image, stack.scratch
        Quota.objects.filter(tenant=tenant).update(instances=100, vcpus=400, memory_mib=100 * 1024, published_ports=100)
        credentials = RegistryCredentials(stack.registry.username, stack.registry.password)
        if not args.skip_single:
            runtime_cold_vs_warm(scratch, image, credentials, args.repeats)

        stack.start_worker(concurrency=4)
        stack.spawn([sys.executable, "-m", "celery", "-A", "portal", "beat", "--schedule", str(scratch / "beat")])
        stack.claim_placement(120, restore_others=True)
        deploy_until_page(access, image, "/first")  # warms the host's image cache and probe
        delete_all(access)
        portal = {"warm": [], "cold": []}
        for index in range(0 if args.skip_single else args.repeats):
            wait_pool_ready(scratch / "host")
            for kind in ("warm", "cold"):  # the second finds the pool empty (refill waits for boots)
                elapsed, start = deploy_until_page(access, image, f"/{kind}-{index}", kind=True)
                portal[start].append(elapsed)
            delete_all(access)
        if args.skip_single:
            pass
        elif portal["warm"] and portal["cold"]:
            warm, cold = statistics.median(portal["warm"]), statistics.median(portal["cold"])
            print(
                f"portal deploy -> page answers: cold {cold:.2f} s, warm {warm:.2f} s = {warm / cold:.0%} of cold; "
                f"runs {portal}"
            )
        else:
            print(f"portal: not both kinds ran: {portal}")

        if not args.apps:
            print("N apps at once: skipped (--apps N to run it)")
            return
        apps_at_once_figures(stack, access, image, args.apps, args.pool if args.pool is not None else args.apps)


def apps_at_once(access, image: str, prefix: str, count: int) -> tuple[float, int, int]:
    """``count`` one-instance apps submitted at once until all run: seconds, warm starts, failed."""
    tenant = access.tenant
    started = time.monotonic()
    for index in range(count):
        app_create(access=access, definition=parse_app_definition(app_json(image, f"/{prefix}-{index}")))
    while (
        Instance.objects.filter(app__tenant=tenant, status__in=INSTANCE_ACTIVE)
        .exclude(status__in=[InstanceStatus.RUNNING, InstanceStatus.HEALTHY])
        .exists()
    ):
        close_old_connections()
        assert time.monotonic() - started < TIMEOUT_S, "the apps did not all start"
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    failed = Instance.objects.filter(app__tenant=tenant, status=InstanceStatus.FAILED).count()
    warm_starts = Instance.objects.filter(app__tenant=tenant, timings_s__has_key="claim").count()
    delete_all(access)
    return elapsed, warm_starts, failed


def apps_at_once_figures(stack, access, image: str, count: int, pool: int) -> None:
    pool_setting = {"HYPERVM_WARM_POOL": f"{SHAPE.label}:{pool}" if pool else ""}
    stack.restart_worker(concurrency=4, env=pool_setting | {"HYPERVM_WARM_POOL_BUDGET_MIB": str(max(pool, 1) * 128)})
    fill_started = time.monotonic()
    wait_pool_ready(stack.host_dir, pool)
    print(f"pool of {pool} filled in {time.monotonic() - fill_started:.1f} s")
    one_s, one_warm, _ = apps_at_once(access, image, "one", 1)
    wait_pool_ready(stack.host_dir, pool)
    many_s, warm_starts, failed = apps_at_once(access, image, "many", count)
    print(
        f"{count} apps at once -> all running: {many_s:.2f} s = {many_s / one_s:.1f}x one app ({one_s:.2f} s, "
        f"{'warm' if one_warm else 'cold'}); pool {pool}: warm starts {warm_starts} of {count}; failed {failed}"
    )
    stack.restart_worker(concurrency=4, env={"HYPERVM_WARM_POOL": ""})
    cold_s, cold_warm, cold_failed = apps_at_once(access, image, "cold", count)
    print(
        f"{count} apps at once, pool off -> all running: {cold_s:.2f} s (warm {cold_warm}, failed {cold_failed}); "
        f"pooled = {many_s / cold_s:.0%} of it"
    )


if __name__ == "__main__":
    main()
