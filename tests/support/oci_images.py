"""The tests' OCI images, built with the platform's builder (tenants.oci_build) and pushed with
skopeo, plus hand-made images for the hostile-layer and multi-platform tests.

Images (repository ``hypervm-test/<name>:latest``):
  printer  Entrypoint /bin/printer, Cmd ["3"]: prints PRINTER_STDOUT_LINES (the last one shows
           $HYPERVM_GREETING from the image Env) on stdout, PRINTER_STDERR_LINE on stderr, exits
           with its first argument (so 3 by default).
  httpd    the platform's demo image (tenants.demo_image), also pushed as demo/hello:latest.
  sigterm  traps TERM, prints "got SIGTERM", exits 0; otherwise sleeps forever.
  noentry  neither Entrypoint nor Cmd.

CLI: ``python -m tests.support.oci_images --registry 127.0.0.1:PORT --authfile F`` builds and
pushes all of them (credentials only ever in the authfile).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tenants.demo_image import DEMO_RECIPE, DEMO_REFERENCE_PATH, HTTPD_INDEX_HTML, HTTPD_PORT  # noqa: F401
from tenants.oci_build import (  # noqa: F401  (re-exported for the tests)
    DEFAULT_PATH_ENV,
    LAYOUT_TAG,
    RECIPE_FORMAT_VERSION,
    UMOCI,
    BuiltImage,
    ImageBuildError,
    ImageFile,
    ImageRecipe,
    PushedImage,
    build_and_push,
    build_image,
    built_image,
    config_argv,
    publish_layout,
    push_image,
    read_layout_manifest,
    run_tool,
)

PRINTER_STDOUT_LINES = (
    "hypervm printer: line one",
    "hypervm printer: line two",
    "hypervm printer: greeting=hello-from-the-image",
)

PRINTER_STDERR_LINE = "hypervm printer: this line goes to stderr"

PRINTER_EXIT_CODE = 3

PRINTER_GREETING_ENV = "HYPERVM_GREETING=hello-from-the-image"

SIGTERM_READY_LINE = "sigterm: waiting for SIGTERM"

SIGTERM_GOT_LINE = "got SIGTERM"

PRINTER_SCRIPT = f"""#!/bin/sh
echo "hypervm printer: line one"
echo "hypervm printer: line two"
echo "hypervm printer: greeting=$HYPERVM_GREETING"
echo "{PRINTER_STDERR_LINE}" >&2
exit "${{1:-{PRINTER_EXIT_CODE}}}"
"""

# `sleep & wait` rather than a bare sleep: the shell runs the trap as soon as TERM arrives.

SIGTERM_SCRIPT = f"""#!/bin/sh
trap 'echo "{SIGTERM_GOT_LINE}"; exit 0' TERM
echo "{SIGTERM_READY_LINE}"
while true; do
  sleep 1 &
  wait $!
done
"""

PRINTER = ImageRecipe(
    name="printer",
    files=(ImageFile("/bin/printer", PRINTER_SCRIPT.encode(), 0o755),),
    entrypoint=("/bin/printer",),
    cmd=(str(PRINTER_EXIT_CODE),),
    env=(DEFAULT_PATH_ENV, PRINTER_GREETING_ENV),
    working_dir="/",
)
HTTPD = DEMO_RECIPE  # the demo image is also the tests' web server
SIGTERM = ImageRecipe(
    name="sigterm",
    files=(ImageFile("/bin/sigterm-waiter", SIGTERM_SCRIPT.encode(), 0o755),),
    cmd=("/bin/sigterm-waiter",),
)
NOENTRY = ImageRecipe(name="noentry")
TEST_RECIPES = (PRINTER, HTTPD, SIGTERM, NOENTRY)


def payload_recipe(payload_bytes: int = 4 * 1024 * 1024) -> ImageRecipe:
    """busybox plus `payload_bytes` of seeded random (incompressible) data: the ~5 MB image of
    the cold-prepare benchmark and of the size-limit tests."""
    return ImageRecipe(
        name=f"payload-{payload_bytes}",
        cmd=("/bin/sh", "-c", "ls -l /payload.bin"),
        random_payload_bytes=payload_bytes,
    )


def build_image_from_layer_tars(
    name: str,
    layer_tars: list[Path],
    cache_dir: Path,
    *,
    cmd: tuple[str, ...] = ("/bin/sh",),
) -> BuiltImage:
    """An image whose layers are the given uncompressed tars, added verbatim (no base layer):
    how the hostile-layer tests get hand-made tar entries into a real OCI image."""
    digest = hashlib.sha256()
    for tar_path in layer_tars:
        digest.update(hashlib.sha256(tar_path.read_bytes()).digest())
    digest.update(json.dumps([RECIPE_FORMAT_VERSION, cmd]).encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{name}-{digest.hexdigest()[:24]}"
    if (final / "index.json").exists():
        return built_image(name, final)
    build_dir = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir))
    layout = build_dir / "layout"
    image = f"{layout}:{LAYOUT_TAG}"
    try:
        run_tool([UMOCI, "init", "--layout", str(layout)])
        run_tool([UMOCI, "new", "--image", image])
        for tar_path in layer_tars:
            run_tool([UMOCI, "raw", "add-layer", "--no-history", "--image", image, str(tar_path)])
        run_tool(config_argv(ImageRecipe(name=name, cmd=cmd), image))
        run_tool([UMOCI, "gc", "--layout", str(layout)])
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    publish_layout(build_dir, layout, final)
    return built_image(name, final)


def build_platform_index(name: str, platform_images: list[tuple[BuiltImage, str]], cache_dir: Path) -> BuiltImage:
    """A layout whose tag names an OCI image index with one entry per (image, architecture):
    a multi-platform image, as a docker buildx push would make. manifest_digest is the index's."""
    manifests = []
    for built, architecture in platform_images:
        digest, _ = read_layout_manifest(built.layout_path)
        size = (built.layout_path / "blobs" / "sha256" / digest.split(":", 1)[1]).stat().st_size
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": {"architecture": architecture, "os": "linux"},
            }
        )
    index_bytes = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        },
        sort_keys=True,
    ).encode()
    index_digest = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
    final = cache_dir / f"{name}-{index_digest.split(':', 1)[1][:24]}"
    if not (final / "index.json").exists():
        build_dir = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir))
        layout = build_dir / "layout"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for built, _architecture in platform_images:
            for blob in (built.layout_path / "blobs" / "sha256").iterdir():
                if not (blobs / blob.name).exists():
                    shutil.copyfile(blob, blobs / blob.name)
        (blobs / index_digest.split(":", 1)[1]).write_bytes(index_bytes)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        top = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": index_digest,
                    "size": len(index_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": LAYOUT_TAG},
                }
            ],
        }
        (layout / "index.json").write_text(json.dumps(top))
        publish_layout(build_dir, layout, final)
    layer_bytes = max(built.layer_bytes for built, _ in platform_images)
    return BuiltImage(recipe_name=name, layout_path=final, manifest_digest=index_digest, layer_bytes=layer_bytes)


def build_and_push_test_images(
    *, cache_dir: Path, registry: str, authfile: Path, tls_verify: bool = False
) -> dict[str, PushedImage]:
    """All TEST_RECIPES; httpd is also pushed as the demo image (DEMO_REFERENCE_PATH)."""
    return {
        recipe.name: build_and_push(
            recipe,
            cache_dir=cache_dir,
            registry=registry,
            authfile=authfile,
            tls_verify=tls_verify,
            extra_repository_tags=(DEMO_REFERENCE_PATH,) if recipe is HTTPD else (),
        )
        for recipe in TEST_RECIPES
    }


def _default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "var" / "test-oci-images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.oci_images",
        description="Build the HyperVM test images with umoci and push them with skopeo.",
    )
    parser.add_argument("--registry", required=True, help="host:port, e.g. 127.0.0.1:5000")
    parser.add_argument("--authfile", type=Path, required=True, help="containers-auth.json")
    parser.add_argument("--cache-dir", type=Path, default=_default_cache_dir())
    parser.add_argument("--tls-verify", action="store_true", help="registry serves verified TLS")
    args = parser.parse_args(argv)
    try:
        pushed = build_and_push_test_images(
            cache_dir=args.cache_dir,
            registry=args.registry,
            authfile=args.authfile,
            tls_verify=args.tls_verify,
        )
    except (ImageBuildError, subprocess.TimeoutExpired, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for image in pushed.values():
        for reference in (image.reference, *image.extra_references):
            print(f"{reference} {image.manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
