"""Small OCI test images built without a Docker engine, and pushed with skopeo.

Each image is Debian's busybox-static plus a few applet symlinks, an /etc/passwd with root and
nobody, and the files of its recipe, inserted with umoci as ONE layer owned by root with fixed
mtimes, then configured with ``umoci config`` (fixed ``created``, no history). Built layouts are
cached under a caller-given directory keyed by a hash of the recipe and the busybox binary, so a
second build is a no-op and the manifest digest stays the same.

Images (repository ``hypervm-test/<name>:latest``):
  printer  Entrypoint /bin/printer, Cmd ["3"]: prints PRINTER_STDOUT_LINES (the last one shows
           $HYPERVM_GREETING from the image Env) on stdout, PRINTER_STDERR_LINE on stderr, exits
           with its first argument (so 3 by default).
  httpd    busybox httpd -f -p 8080 -h /www serving HTTPD_INDEX_HTML; ExposedPorts 8080/tcp.
           Also pushed as demo/hello:latest (the portal's demo image).
  sigterm  traps TERM, prints "got SIGTERM", exits 0; otherwise sleeps forever.
  noentry  neither Entrypoint nor Cmd.

CLI: ``python -m tests.support.oci_images --registry 127.0.0.1:PORT --authfile F`` builds and
pushes all of them (credentials only ever in the authfile).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_PATH = Path("/bin/busybox")
UMOCI = "umoci"
SKOPEO = "skopeo"
# Fixed times keep layer tars and configs byte-identical from one build to the next.
FIXED_MTIME = 1_700_000_000
FIXED_CREATED = "2023-11-14T22:13:20Z"
LAYOUT_TAG = "latest"
COMMAND_TIMEOUT_S = 120
RECIPE_FORMAT_VERSION = 1  # bump when the build procedure changes

TEST_REPOSITORY_PREFIX = "hypervm-test"
DEMO_REFERENCE_PATH = "demo/hello:latest"

PRINTER_STDOUT_LINES = (
    "hypervm printer: line one",
    "hypervm printer: line two",
    "hypervm printer: greeting=hello-from-the-image",
)
PRINTER_STDERR_LINE = "hypervm printer: this line goes to stderr"
PRINTER_EXIT_CODE = 3
PRINTER_GREETING_ENV = "HYPERVM_GREETING=hello-from-the-image"
HTTPD_PORT = 8080
HTTPD_INDEX_HTML = "<html><body><h1>Hello from a HyperVM</h1></body></html>\n"
SIGTERM_READY_LINE = "sigterm: waiting for SIGTERM"
SIGTERM_GOT_LINE = "got SIGTERM"
DEFAULT_PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

BASE_APPLETS = ("sh", "echo", "cat", "sleep", "env", "id", "ls", "pwd", "true", "false")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"

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


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageFile:
    path: str  # absolute path inside the image
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    files: tuple[ImageFile, ...] = ()
    applets: tuple[str, ...] = BASE_APPLETS
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (DEFAULT_PATH_ENV,)
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    random_payload_bytes: int = 0  # incompressible filler, for size tests and the benchmark

    @property
    def repository(self) -> str:
        return f"{TEST_REPOSITORY_PREFIX}/{self.name}"

    def cache_key(self) -> str:
        recipe = json.dumps(
            {
                "format": RECIPE_FORMAT_VERSION,
                "name": self.name,
                "files": [[f.path, f.content.hex(), f.mode] for f in self.files],
                "applets": self.applets,
                "entrypoint": self.entrypoint,
                "cmd": self.cmd,
                "env": self.env,
                "working_dir": self.working_dir,
                "user": self.user,
                "exposed_ports": self.exposed_ports,
                "random_payload_bytes": self.random_payload_bytes,
                "busybox_sha256": _busybox_sha256(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(recipe.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class BuiltImage:
    recipe_name: str
    layout_path: Path  # OCI image layout; the image is tagged LAYOUT_TAG
    manifest_digest: str
    layer_bytes: int  # sum of the compressed layer sizes in the manifest


@dataclass(frozen=True)
class PushedImage:
    name: str
    reference: str  # "127.0.0.1:PORT/hypervm-test/printer:latest"
    manifest_digest: str
    layer_bytes: int
    extra_references: tuple[str, ...] = field(default=())


PRINTER = ImageRecipe(
    name="printer",
    files=(ImageFile("/bin/printer", PRINTER_SCRIPT.encode(), 0o755),),
    entrypoint=("/bin/printer",),
    cmd=(str(PRINTER_EXIT_CODE),),
    env=(DEFAULT_PATH_ENV, PRINTER_GREETING_ENV),
    working_dir="/",
)
HTTPD = ImageRecipe(
    name="httpd",
    files=(ImageFile("/www/index.html", HTTPD_INDEX_HTML.encode()),),
    applets=(*BASE_APPLETS, "httpd"),
    entrypoint=("/bin/httpd", "-f", "-p", str(HTTPD_PORT), "-h", "/www"),
    exposed_ports=(f"{HTTPD_PORT}/tcp",),
    working_dir="/www",
)
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


_busybox_digest_cache: dict[Path, str] = {}


def _busybox_sha256() -> str:
    if BUSYBOX_PATH not in _busybox_digest_cache:
        _busybox_digest_cache[BUSYBOX_PATH] = hashlib.sha256(BUSYBOX_PATH.read_bytes()).hexdigest()
    return _busybox_digest_cache[BUSYBOX_PATH]


def _run(argv: list[str], *, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=env, check=False)
    if result.returncode != 0:
        subcommand = next(arg for arg in argv[1:] if not arg.startswith("-"))
        raise ImageBuildError(f"{argv[0]} {subcommand} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _write_file(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


def _populate_rootfs(recipe: ImageRecipe, rootfs: Path) -> None:
    for directory in ("bin", "etc", "tmp", "root", "usr/bin", "proc", "sys", "dev"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "root").chmod(0o700)
    shutil.copyfile(BUSYBOX_PATH, rootfs / "bin/busybox")
    (rootfs / "bin/busybox").chmod(0o755)
    for applet in recipe.applets:
        (rootfs / "bin" / applet).symlink_to("busybox")
    _write_file(rootfs / "etc/passwd", PASSWD.encode(), 0o644)
    _write_file(rootfs / "etc/group", GROUP.encode(), 0o644)
    for image_file in recipe.files:
        _write_file(rootfs / image_file.path.lstrip("/"), image_file.content, image_file.mode)
    if recipe.random_payload_bytes:
        seeded = random.Random(recipe.name)  # deterministic, still incompressible for gzip
        _write_file(rootfs / "payload.bin", seeded.randbytes(recipe.random_payload_bytes), 0o644)
    for path in sorted(rootfs.rglob("*"), reverse=True):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(rootfs, (FIXED_MTIME, FIXED_MTIME))


def _config_argv(recipe: ImageRecipe, image: str) -> list[str]:
    argv = [UMOCI, "config", "--image", image, "--no-history", "--created", FIXED_CREATED]
    argv += ["--author", "hypervm tests", "--architecture", "amd64", "--os", "linux"]
    for value in recipe.entrypoint:
        argv += ["--config.entrypoint", value]
    for value in recipe.cmd:
        argv += ["--config.cmd", value]
    for value in recipe.env:
        argv += ["--config.env", value]
    for port in recipe.exposed_ports:
        argv += ["--config.exposedports", port]
    if recipe.working_dir:
        argv += ["--config.workingdir", recipe.working_dir]
    if recipe.user:
        argv += ["--config.user", recipe.user]
    return argv


def read_layout_manifest(layout: Path, tag: str = LAYOUT_TAG) -> tuple[str, dict]:
    """(manifest digest, manifest) of `tag` in an OCI layout we built ourselves (for an index
    layout, the manifest is the index document)."""
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            algorithm, hex_digest = descriptor["digest"].split(":", 1)
            manifest = json.loads((layout / "blobs" / algorithm / hex_digest).read_text())
            return descriptor["digest"], manifest
    raise ImageBuildError(f"tag {tag} not found in {layout}")


def _built_image(name: str, layout: Path) -> BuiltImage:
    digest, manifest = read_layout_manifest(layout)
    layer_bytes = sum(layer["size"] for layer in manifest["layers"])
    return BuiltImage(recipe_name=name, layout_path=layout, manifest_digest=digest, layer_bytes=layer_bytes)


def _publish_layout(build_dir: Path, layout: Path, final: Path) -> None:
    try:
        os.rename(layout, final)
    except OSError:
        if not (final / "index.json").exists():  # lost a race to a concurrent builder: fine
            raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def build_image(recipe: ImageRecipe, cache_dir: Path) -> BuiltImage:
    """Build (or reuse from cache_dir) the OCI layout of `recipe`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{recipe.name}-{recipe.cache_key()}"
    if (final / "index.json").exists():
        return _built_image(recipe.name, final)
    build_dir = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=cache_dir))
    layout = build_dir / "layout"
    rootfs = build_dir / "rootfs"
    image = f"{layout}:{LAYOUT_TAG}"
    try:
        _populate_rootfs(recipe, rootfs)
        _run([UMOCI, "init", "--layout", str(layout)])
        _run([UMOCI, "new", "--image", image])
        _run([UMOCI, "insert", "--no-history", "--image", image, str(rootfs), "/"])
        _run(_config_argv(recipe, image))
        _run([UMOCI, "gc", "--layout", str(layout)])
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    _publish_layout(build_dir, layout, final)
    return _built_image(recipe.name, final)


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
        return _built_image(name, final)
    build_dir = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir))
    layout = build_dir / "layout"
    image = f"{layout}:{LAYOUT_TAG}"
    try:
        _run([UMOCI, "init", "--layout", str(layout)])
        _run([UMOCI, "new", "--image", image])
        for tar_path in layer_tars:
            _run([UMOCI, "raw", "add-layer", "--no-history", "--image", image, str(tar_path)])
        _run(_config_argv(ImageRecipe(name=name, cmd=cmd), image))
        _run([UMOCI, "gc", "--layout", str(layout)])
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    _publish_layout(build_dir, layout, final)
    return _built_image(name, final)


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
        _publish_layout(build_dir, layout, final)
    layer_bytes = max(built.layer_bytes for built, _ in platform_images)
    return BuiltImage(recipe_name=name, layout_path=final, manifest_digest=index_digest, layer_bytes=layer_bytes)


def push_image(
    built: BuiltImage,
    *,
    registry: str,
    repository_tag: str,
    authfile: Path,
    tls_verify: bool = False,
) -> str:
    """Push a built layout to docker://registry/repository_tag; returns the reference."""
    reference = f"{registry}/{repository_tag}"
    with tempfile.TemporaryDirectory(prefix="hypervm-push-") as scratch:
        env = {**os.environ, "TMPDIR": scratch}
        _run(
            [
                SKOPEO,
                "--insecure-policy",
                "copy",
                "--quiet",
                "--all",
                "--authfile",
                str(authfile),
                f"--dest-tls-verify={'true' if tls_verify else 'false'}",
                f"oci:{built.layout_path}:{LAYOUT_TAG}",
                f"docker://{reference}",
            ],
            env=env,
        )
    return reference


def build_and_push(
    recipe: ImageRecipe,
    *,
    cache_dir: Path,
    registry: str,
    authfile: Path,
    tls_verify: bool = False,
    extra_repository_tags: tuple[str, ...] = (),
) -> PushedImage:
    built = build_image(recipe, cache_dir)
    reference = push_image(
        built,
        registry=registry,
        repository_tag=f"{recipe.repository}:{LAYOUT_TAG}",
        authfile=authfile,
        tls_verify=tls_verify,
    )
    extra = tuple(
        push_image(
            built,
            registry=registry,
            repository_tag=repository_tag,
            authfile=authfile,
            tls_verify=tls_verify,
        )
        for repository_tag in extra_repository_tags
    )
    return PushedImage(
        name=recipe.name,
        reference=reference,
        manifest_digest=built.manifest_digest,
        layer_bytes=built.layer_bytes,
        extra_references=extra,
    )


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
