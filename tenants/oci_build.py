"""OCI images built without a Docker engine, and pushed with skopeo: the platform's demo image
(tenants.demo_image) and the tests' images are made this way.

Each image is Debian's busybox-static plus a few applet symlinks, an /etc/passwd with root and
nobody, and the files of its recipe, inserted with umoci as ONE layer owned by root with fixed
mtimes, then configured with ``umoci config`` (fixed ``created``, no history). Built layouts are
cached under a caller-given directory keyed by a hash of the recipe and the busybox binary, so a
second build is a no-op and the manifest digest stays the same. Registry credentials only ever
reach skopeo in an authfile.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
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
RECIPE_FORMAT_VERSION = 2  # bump when the build procedure changes

REPOSITORY_PREFIX = "hypervm-test"  # where a recipe pushes to, unless told otherwise

DEFAULT_PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

BASE_APPLETS = ("sh", "echo", "cat", "sleep", "env", "id", "ls", "pwd", "true", "false")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"

GROUP = "root:x:0:\nnogroup:x:65534:\n"


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
        return f"{REPOSITORY_PREFIX}/{self.name}"

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


_busybox_digest_cache: dict[Path, str] = {}


def _busybox_sha256() -> str:
    if BUSYBOX_PATH not in _busybox_digest_cache:
        _busybox_digest_cache[BUSYBOX_PATH] = hashlib.sha256(BUSYBOX_PATH.read_bytes()).hexdigest()
    return _busybox_digest_cache[BUSYBOX_PATH]


def run_tool(argv: list[str], *, env: dict[str, str] | None = None) -> str:
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


def config_argv(recipe: ImageRecipe, image: str) -> list[str]:
    argv = [UMOCI, "config", "--image", image, "--no-history", "--created", FIXED_CREATED]
    argv += ["--author", "hypervm", "--architecture", "amd64", "--os", "linux"]
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


def built_image(name: str, layout: Path) -> BuiltImage:
    digest, manifest = read_layout_manifest(layout)
    layer_bytes = sum(layer["size"] for layer in manifest["layers"])
    return BuiltImage(recipe_name=name, layout_path=layout, manifest_digest=digest, layer_bytes=layer_bytes)


def publish_layout(build_dir: Path, layout: Path, final: Path) -> None:
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
        return built_image(recipe.name, final)
    build_dir = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=cache_dir))
    layout = build_dir / "layout"
    rootfs = build_dir / "rootfs"
    image = f"{layout}:{LAYOUT_TAG}"
    try:
        _populate_rootfs(recipe, rootfs)
        run_tool([UMOCI, "init", "--layout", str(layout)])
        run_tool([UMOCI, "new", "--image", image])
        run_tool([UMOCI, "insert", "--no-history", "--image", image, str(rootfs), "/"])
        run_tool(config_argv(recipe, image))
        run_tool([UMOCI, "gc", "--layout", str(layout)])
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    publish_layout(build_dir, layout, final)
    return built_image(recipe.name, final)


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
        run_tool(
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
    repository_tag: str | None = None,
    extra_repository_tags: tuple[str, ...] = (),
) -> PushedImage:
    """Build (or reuse) `recipe` and push it as repository_tag (default: its own repository,
    tagged LAYOUT_TAG), then as each of extra_repository_tags."""
    built = build_image(recipe, cache_dir)
    reference = push_image(
        built,
        registry=registry,
        repository_tag=repository_tag or f"{recipe.repository}:{LAYOUT_TAG}",
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
