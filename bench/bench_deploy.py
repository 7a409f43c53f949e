"""Benchmark of issue 4: the portal's deploy overhead, and 20 apps deployed at once.

Not a test: prints figures. Uses the dev database (a throw-away tenant, removed at the end),
its own registry on 127.0.0.1, one compute-host worker (portal + host queue) and beat.

1. baseline: the runtime alone boots the HTTP image with a published port (warm image cache)
   until the page answers (polled from the start, like the portal's); portal: a Marathon
   definition through ``app_create`` until the page answers on the allocated host port (warm
   cache on that host). Ratio portal / runtime
   (target <= 1.15x), medians over the repeats.
2. 20 one-instance apps submitted at once -> all running; total vs one app (target <= 3x on
   these 2 cores).

    python -m bench.bench_deploy [--repeats 3] [--apps 20]
"""

from __future__ import annotations

import argparse
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

from bench.stack import bench_stack  # noqa: E402
from portal.choices import INSTANCE_ACTIVE, InstanceStatus  # noqa: E402
from portal.marathon import parse_app_definition  # noqa: E402
from portal.models import App, Instance  # noqa: E402
from portal.services.apps import app_create, app_delete  # noqa: E402
from tenants.models import Quota  # noqa: E402
from tests.support.live_stack import free_port  # noqa: E402
from vmworker.driver.spec import PortForward  # noqa: E402
from vmworker.images import RegistryCredentials  # noqa: E402
from vmworker.runtime import HyperVMRuntime, InstanceSpec, RuntimeSettings  # noqa: E402

TIMEOUT_S = 600


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


def qemu_cpu_s(domain_name: str) -> float:
    """CPU seconds (user + system) the domain's QEMU process has used since it started."""
    pid = Path(f"/run/libvirt/qemu/{domain_name}.pid").read_text().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def app_json(image: str, app_id: str) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 128,
        "container": {"docker": {"image": image}, "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
        "networks": [{"mode": "container/bridge"}],
    }


def deploy_until_page(access, image: str, app_id: str) -> float:
    started = time.monotonic()
    app_create(access=access, definition=parse_app_definition(app_json(image, app_id)))
    instance = Instance.objects.filter(app__marathon_id=app_id, app__tenant=access.tenant).first()
    elapsed = wait_page(instance.host_ports[0], started)
    instance.refresh_from_db()
    print(
        f"  {app_id}: page after {elapsed:.2f} s; phases {instance.phase_times}; timings {instance.timings_s}",
        flush=True,
    )
    return elapsed


def delete_all(access) -> None:
    for app in App.objects.filter(tenant=access.tenant, deleting=False):
        app_delete(access=access, app=app, force=True)
    deadline = time.monotonic() + TIMEOUT_S
    while App.objects.filter(tenant=access.tenant).exists() and time.monotonic() < deadline:
        close_old_connections()
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--apps", type=int, default=20)
    args = parser.parse_args()

    with bench_stack("deploy", "Benchmark", {"DJANGO_SETTINGS_MODULE": "portal.settings.dev"}) as stack:
        tenant, access, image, scratch = stack.tenant, stack.access, stack.image, stack.scratch
        Quota.objects.filter(tenant=tenant).update(instances=100, vcpus=400, memory_mib=100 * 1024, published_ports=100)
        credentials = RegistryCredentials(stack.registry.username, stack.registry.password)
        stack.start_worker(concurrency=8)
        stack.spawn([sys.executable, "-m", "celery", "-A", "portal", "beat", "--schedule", str(scratch / "beat")])
        stack.claim_placement(120, restore_others=True)

        runtime = HyperVMRuntime(RuntimeSettings(state_dir=scratch / "runtime"))
        deploy_until_page(access, image, "/warm")  # warms the host's image cache and probe
        delete_all(access)
        baseline, portal, boot_cpu = [], [], []
        for index in range(args.repeats + 1):
            port = free_port()
            spec = InstanceSpec(
                image=image, credentials=credentials, tls_verify=False, ports=(PortForward("127.0.0.1", port, 8080),)
            )
            started = time.monotonic()
            # The baseline is polled exactly like the portal: from the start, while the VM boots.
            with ThreadPoolExecutor(max_workers=1) as pool:
                boot = pool.submit(runtime.boot, spec)
                elapsed = wait_page(port, started)
                booted = boot.result()
            cpu_s = qemu_cpu_s(booted.domain_name)
            print(f"  runtime: page after {elapsed:.2f} s; timings {booted.timings_s}", flush=True)
            runtime.remove(spec.instance_id)
            portal_s = deploy_until_page(access, image, f"/single-{index}")
            delete_all(access)
            if index:  # the first pair warms the runtime's own cache
                baseline.append(elapsed)
                portal.append(portal_s)
                boot_cpu.append(cpu_s)

        started = time.monotonic()
        for index in range(args.apps):
            app_create(access=access, definition=parse_app_definition(app_json(image, f"/many-{index}")))
        while (
            Instance.objects.filter(app__tenant=tenant, status__in=INSTANCE_ACTIVE)
            .exclude(status__in=[InstanceStatus.RUNNING, InstanceStatus.HEALTHY])
            .exists()
        ):
            close_old_connections()
            assert time.monotonic() - started < TIMEOUT_S, "the apps did not all start"
            time.sleep(0.2)
        many_s = time.monotonic() - started
        failed = Instance.objects.filter(app__tenant=tenant, status=InstanceStatus.FAILED).count()
        delete_all(access)

        runtime_median, portal_median = statistics.median(baseline), statistics.median(portal)
        print(
            f"deploy -> page answers: portal {portal_median:.2f} s vs runtime {runtime_median:.2f} s "
            f"= {portal_median / runtime_median:.3f}x (target <= 1.15x); runs portal {portal} runtime {baseline}"
        )
        print(
            f"{args.apps} apps at once -> all running: {many_s:.1f} s = {many_s / portal_median:.2f}x one app "
            f"(target <= 3x on 2 cores); failed launches: {failed}"
        )
        cores = os.cpu_count() or 1
        floor_s = args.apps * statistics.median(boot_cpu) / cores
        print(
            f"QEMU CPU per boot (start -> page answers): {statistics.median(boot_cpu):.2f} s; "
            f"{args.apps} boots on {cores} cores need at least {floor_s:.1f} s of CPU = "
            f"{floor_s / portal_median:.2f}x one app, before any portal work; runs {boot_cpu}"
        )


if __name__ == "__main__":
    main()
