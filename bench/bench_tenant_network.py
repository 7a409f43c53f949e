"""Benchmark: what a tenant-network NIC costs a HyperVM, and the latency between two VMs on one.

Not a test: prints figures. Interleaved, ``repeats`` times: boot of the printing image without
any NIC and with a NIC on a tenant network (to app exec: ``boot()`` returns; the guest's own
``boot_to_exec``); then the ping round trip between two VMs of one tenant network (20 pings,
busybox's min/avg/max). Only the bench's own VMs and networks are touched, and removed.

    python -m bench.bench_tenant_network [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.bench_runtime import boot_through_runtime
from tests.support.oci_images import HTTPD, PRINTER, build_and_push
from tests.support.registry import start_registry, stop_registry
from vmworker.guestinit.protocol import OutputLine
from vmworker.images import RegistryCredentials
from vmworker.network import NetworkAttachment, TenantNetwork, instance_mac
from vmworker.runtime import HyperVMRuntime, InstanceSpec, RuntimeSettings

MEMORY_MIB = 128
PING_COUNT = 20
ROUND_TRIP = re.compile(r"round-trip min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")
TIMEOUT_S = 120


def _on(network: TenantNetwork, instance_id: str, address: str) -> NetworkAttachment:
    return NetworkAttachment(network=network, mac=instance_mac(instance_id, "tenant"), ip_cidr=f"{address}/24")


def _ping_round_trip_ms(runtime: HyperVMRuntime, spec_for, network: TenantNetwork) -> dict[str, float]:
    server_id, pinger_id = str(uuid.uuid4()), str(uuid.uuid4())
    runtime.boot(spec_for(HTTPD, instance_id=server_id, network=_on(network, server_id, "10.1.0.1")))
    pinger = spec_for(
        HTTPD,
        instance_id=pinger_id,
        network=_on(network, pinger_id, "10.1.0.2"),
        entrypoint=("/bin/busybox", "ping", "-c", str(PING_COUNT), "-i", "0.2", "-w", "60", "10.1.0.1"),
    )
    runtime.boot(pinger)
    deadline = time.monotonic() + TIMEOUT_S
    while runtime.status(pinger_id).exit_code is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the pinger did not finish")
        time.sleep(0.2)
    lines = [r.text for r in runtime.records(pinger_id) if isinstance(r, OutputLine)]
    runtime.remove(pinger_id)
    runtime.remove(server_id)
    match = next((m for m in map(ROUND_TRIP.search, lines) if m), None)
    if match is None:
        raise RuntimeError(f"no round-trip summary in the pinger's output: {lines[-5:]}")
    return dict(zip(("min_ms", "avg_ms", "max_ms"), map(float, match.groups()), strict=True))


def bench_tenant_network(repeats: int = 5) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="hypervm-bench-tnet-", dir="/var/tmp"))
    scratch.chmod(0o755)
    registry = start_registry(scratch / "registry")
    network = TenantNetwork.for_network_id(str(uuid.uuid4()))
    runtime = None
    try:
        authfile = registry.write_authfile(scratch / "auth.json")
        layouts = scratch / "layouts"
        images = {
            recipe.name: build_and_push(recipe, cache_dir=layouts, registry=registry.host_port, authfile=authfile)
            for recipe in (PRINTER, HTTPD)
        }
        credentials = RegistryCredentials(registry.username, registry.password)
        runtime = HyperVMRuntime(RuntimeSettings(state_dir=scratch / "state"))

        def spec_for(recipe, **fields) -> InstanceSpec:
            return InstanceSpec(
                image=images[recipe.name].reference,
                credentials=credentials,
                tls_verify=False,
                memory_mib=MEMORY_MIB,
                **fields,
            )

        boot_through_runtime(runtime, spec_for(PRINTER))  # warm-up: pull, initramfs, kernel, probe
        runs: dict[str, list[tuple[float, float]]] = {"no_nic": [], "tenant_nic": []}
        for _ in range(repeats):
            for variant in runs:
                instance_id = str(uuid.uuid4())
                network_field = _on(network, instance_id, "10.1.0.9") if variant == "tenant_nic" else None
                spec = spec_for(PRINTER, instance_id=instance_id, network=network_field)
                to_exec, _, timings = boot_through_runtime(runtime, spec)
                runtime.remove(instance_id)
                runs[variant].append((to_exec, timings["boot_to_exec"]))
        figures = {
            variant: {
                "to_exec_s": round(statistics.median(run[0] for run in variant_runs), 3),
                "guest_boot_to_exec_s": round(statistics.median(run[1] for run in variant_runs), 3),
            }
            for variant, variant_runs in runs.items()
        }
        return {
            "virt_type": runtime.virt_type(),
            "repeats": repeats,
            "boot_median": figures,
            "ping_between_two_vms": _ping_round_trip_ms(runtime, spec_for, network),
        }
    finally:
        if runtime is not None:
            for status in runtime.list_instances():
                runtime.remove(status.instance_id)
            runtime.host.network_remove(network, only_if_unused=False)
        stop_registry(registry)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    print(json.dumps(bench_tenant_network(parser.parse_args().repeats), indent=2))


if __name__ == "__main__":
    main()
