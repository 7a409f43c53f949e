"""Benchmark: cold prepare of a ~5 MB image (busybox + 4 MiB of incompressible data).

Not a test. Starts its own docker-registry on 127.0.0.1 (htpasswd auth), pushes the payload
image, then prepares it `repeats` times, each time into a fresh, empty store (cold: pull, unpack,
fs image), and once more into the last store (the cache hit). Target: cold prepare <= 1 s.
``count`` is the unpack limit's pre-count (every layer streamed through its decompressor).

    python -m bench.bench_image_prepare [--repeats N] [--payload-mib N]

`bench_cold_prepare()` returns the figures for the lead's combined benchmark.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from tests.support.oci_images import build_and_push, payload_recipe
from tests.support.registry import start_registry, stop_registry
from vmworker.images import ImageStore, RegistryCredentials

PAYLOAD_BYTES = 4 * 1024 * 1024
GIB = 1024 * 1024 * 1024
COLD_PREPARE_TARGET_S = 1.0


def bench_cold_prepare(
    *, repeats: int = 5, work_dir: Path | None = None, payload_bytes: int = PAYLOAD_BYTES
) -> dict[str, object]:
    """Cold-prepare timings in seconds: per run and the median of each phase."""
    scratch = Path(tempfile.mkdtemp(prefix="hypervm-bench-images-", dir=work_dir))
    registry = start_registry(scratch / "registry")
    try:
        authfile = registry.write_authfile(scratch / "auth.json")
        pushed = build_and_push(
            payload_recipe(payload_bytes),
            cache_dir=scratch / "layouts",
            registry=registry.host_port,
            authfile=authfile,
        )
        credentials = RegistryCredentials(registry.username, registry.password)
        runs = []
        store = None
        for run in range(repeats):
            store = ImageStore(scratch / f"store-{run}", max_cache_bytes=GIB, max_image_bytes=GIB)
            prepared = store.prepare(pushed.reference, credentials=credentials, tls_verify=False)
            runs.append({**prepared.timings_s, "total": sum(prepared.timings_s.values())})
        assert store is not None
        hit = store.prepare(pushed.reference, credentials=credentials, tls_verify=False)
        return {
            "image_compressed_bytes": pushed.layer_bytes,
            "fs_image_bytes": prepared.size_bytes,
            "fs_type": prepared.fs_type,
            "runs": runs,
            "median_s": {
                phase: statistics.median(run[phase] for run in runs)
                for phase in ("pull", "count", "unpack", "fs_image", "total")
            },
            "cache_hit_s": hit.timings_s["cache"],
        }
    finally:
        stop_registry(registry)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--payload-mib", type=int, default=PAYLOAD_BYTES // (1024 * 1024))
    args = parser.parse_args()
    figures = bench_cold_prepare(repeats=args.repeats, payload_bytes=args.payload_mib * 1024 * 1024)
    median = figures["median_s"]
    print(
        f"image: {figures['image_compressed_bytes'] / 1e6:.2f} MB compressed, "
        f"{figures['fs_type']} image {figures['fs_image_bytes'] / 1e6:.2f} MB"
    )
    for index, run in enumerate(figures["runs"]):
        print(
            f"cold prepare #{index + 1}: {run['total']:.3f} s "
            f"(pull {run['pull']:.3f}, count {run['count']:.3f}, "
            f"unpack {run['unpack']:.3f}, fs_image {run['fs_image']:.3f})"
        )
    verdict = "OK" if median["total"] <= COLD_PREPARE_TARGET_S else "OVER TARGET"
    print(
        f"cold prepare median: {median['total']:.3f} s (pull {median['pull']:.3f}, "
        f"count {median['count']:.3f}, unpack {median['unpack']:.3f}, fs_image {median['fs_image']:.3f}); "
        f"target <= {COLD_PREPARE_TARGET_S:.1f} s: {verdict}"
    )
    print(f"cache hit (registry round trip only): {figures['cache_hit_s']:.3f} s")


if __name__ == "__main__":
    main()
