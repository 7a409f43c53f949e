"""Builds the HyperVM initramfs: our /init plus only the kernel modules it needs.

Contract: ``build_initramfs`` returns a newc cpio (see INITRAMFS_COMPRESSION) whose
bytes depend only on its inputs (init source, compiler and static libc, the
module files, busybox if given); it is cached under ``cache_dir`` by a hash of
exactly those inputs, so a second call is a file lookup. Layout::

    /init                       hvinit, static (init/hvinit.c)
    /dev/console                char 5:1, so the kernel can give /init fds 0-2
    /lib/modules/<name>.ko      uncompressed (the init calls finit_module on them)
    /lib/modules/hvm.order      "<group> <name>.ko" in dependency order; group
                                "core" always loads, "net" only with a network
    /bin/busybox                only when a busybox is passed (debugging aid)

Modules built into the kernel (modules.builtin) are skipped; dependencies come
from modules.dep. No host tool that interprets paths (cpio, tar) is run: the
archive is written here.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

INIT_SOURCE = Path(__file__).with_name("init") / "hvinit.c"
# Order is the load order of the roots; their dependencies go first.
CORE_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "erofs", "overlay", "ext4")
NET_MODULES = ("virtio_net",)
# Uncompressed: the kernel unpacks it with no gunzip under TCG (measured in the report).
INITRAMFS_COMPRESSION = "none"
_BUILDER_VERSION = "hvm-initramfs-1"
_COMPILE_FLAGS = (
    "-static",
    "-Os",
    "-s",
    "-Wall",
    "-Wno-format-truncation",
    "-fno-ident",
    "-Wl,--build-id=none",
)
_MODULE_SUFFIXES = (".ko.zst", ".ko.xz", ".ko.gz", ".ko")
_COMPILE_TIMEOUT_S = 120


class InitramfsError(RuntimeError):
    """The initramfs cannot be built (missing module, compiler failure...)."""


@dataclass(frozen=True)
class GuestModule:
    name: str
    group: str  # "core" | "net"
    path: Path  # in the host's module tree, possibly compressed


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _module_tree(modules_root: Path, kernel_release: str) -> Path:
    """Accepts /lib/modules or /lib/modules/<release> (both are called modules_root)."""
    for candidate in (modules_root / kernel_release, modules_root):
        if (candidate / "modules.dep").is_file():
            return candidate
    raise InitramfsError(f"no modules.dep for {kernel_release} under {modules_root}")


def resolve_guest_modules(
    modules_root: Path,
    kernel_release: str,
    core: tuple[str, ...] | None = None,
    net: tuple[str, ...] | None = None,
) -> list[GuestModule]:
    """The .ko files to load, dependencies first; built-in modules left out."""
    core = CORE_MODULES if core is None else core
    net = NET_MODULES if net is None else net
    tree = _module_tree(modules_root, kernel_release)
    builtin_file = tree / "modules.builtin"
    builtin = set()
    if builtin_file.is_file():
        builtin = {_module_name(line) for line in builtin_file.read_text().split()}
    dependencies: dict[str, tuple[str, list[str]]] = {}
    for line in (tree / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        dependencies[_module_name(path)] = (path.strip(), [_module_name(d) for d in deps.split()])

    ordered: list[GuestModule] = []
    placed: set[str] = set()

    def place(name: str, group: str, chain: tuple[str, ...]) -> None:
        if name in placed or name in builtin:
            return
        if name in chain:
            raise InitramfsError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in dependencies:
            raise InitramfsError(f"module {name} is neither built in nor in modules.dep")
        path, deps = dependencies[name]
        for dep in deps:
            place(dep, group, (*chain, name))
        placed.add(name)
        ordered.append(GuestModule(name=name, group=group, path=tree / path))

    for name in core:
        place(name, "core", ())
    for name in net:
        place(name, "net", ())
    return ordered


def _module_bytes(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        # The stdlib of Python 3.11 has no zstd; the zstd tool reads stdin, no path argv.
        with open(path, "rb") as source:
            result = subprocess.run(["zstd", "-dc"], stdin=source, capture_output=True, check=False, timeout=60)
        if result.returncode != 0:
            raise InitramfsError(f"zstd failed on {path}: {result.stderr.decode(errors='replace')}")
        return result.stdout
    return path.read_bytes()


def _compiler_identity() -> bytes:
    """What besides the source decides the init's bytes: gcc and the static libc."""
    try:
        version = subprocess.run(["gcc", "--version"], capture_output=True, check=True, timeout=30).stdout
        libc = subprocess.run(
            ["gcc", "-print-file-name=libc.a"], capture_output=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise InitramfsError(f"gcc is needed to build the guest init: {exc}") from exc
    libc_path = Path(os.fsdecode(libc))
    libc_digest = hashlib.sha256(libc_path.read_bytes()).hexdigest() if libc_path.is_file() else ""
    return version + b"\0" + libc_digest.encode()


def compile_init(source: Path, output: Path) -> None:
    """gcc -static -Os; -ffile-prefix-map and no ident/build-id keep it byte-reproducible."""
    command = [
        "gcc",
        *_COMPILE_FLAGS,
        f"-ffile-prefix-map={source.parent}=.",
        "-o",
        str(output),
        str(source),
    ]
    try:
        result = subprocess.run(command, capture_output=True, timeout=_COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InitramfsError(f"compiling the guest init failed: {exc}") from exc
    if result.returncode != 0:
        raise InitramfsError("compiling the guest init failed:\n" + result.stderr.decode(errors="replace"))


class NewcArchive:
    """A minimal newc ("070701") cpio writer with fixed owners and mtimes."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._next_inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        encoded_name = name.encode() + b"\0"
        fields = (
            self._next_inode,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded_name),
            0,
        )
        self._next_inode += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        name_padding = -(len(header) + len(encoded_name)) % 4
        self._chunks.append(header + encoded_name + b"\0" * name_padding)
        self._chunks.append(data + b"\0" * (-len(data) % 4))

    def add_directory(self, name: str, permissions: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | permissions)

    def add_file(self, name: str, data: bytes, permissions: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | permissions, data)

    def add_char_device(self, name: str, major: int, minor: int, permissions: int) -> None:
        self._entry(name, stat.S_IFCHR | permissions, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _archive(init_binary: bytes, modules: list[GuestModule], busybox: bytes | None) -> bytes:
    archive = NewcArchive()
    archive.add_directory("dev")
    archive.add_char_device("dev/console", 5, 1, 0o600)
    archive.add_file("init", init_binary, 0o755)
    archive.add_directory("lib")
    archive.add_directory("lib/modules")
    order = "".join(f"{module.group} {module.name}.ko\n" for module in modules)
    archive.add_file("lib/modules/hvm.order", order.encode())
    for module in sorted(modules, key=lambda m: m.name):
        archive.add_file(f"lib/modules/{module.name}.ko", _module_bytes(module.path))
    if busybox is not None:
        archive.add_directory("bin")
        archive.add_file("bin/busybox", busybox, 0o755)
    data = archive.finish()
    if INITRAMFS_COMPRESSION == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    return data


def _cache_key(init_source: bytes, modules: list[GuestModule], busybox: bytes | None) -> str:
    digest = hashlib.sha256()

    def part(label: str, value: bytes) -> None:
        digest.update(f"{label}:{len(value)}:".encode())
        digest.update(value)

    part("builder", f"{_BUILDER_VERSION}/{INITRAMFS_COMPRESSION}/{_COMPILE_FLAGS}".encode())
    part("init", init_source)
    part("compiler", _compiler_identity())
    for module in modules:
        part("module", f"{module.group} {module.name}".encode())
        part("module-file", module.path.read_bytes())
    part("busybox", busybox if busybox is not None else b"<none>")
    return digest.hexdigest()


def build_initramfs(
    *,
    kernel_release: str,
    modules_root: Path,
    busybox: Path | None = None,
    cache_dir: Path,
) -> Path:
    """The initramfs for this kernel, built once per distinct input and then reused.

    ``busybox`` is optional and only a debugging aid (the init never uses it);
    leave it None in production: it is ~2 MB more to load at every boot.
    """
    modules = resolve_guest_modules(Path(modules_root), kernel_release)
    init_source = INIT_SOURCE.read_bytes()
    busybox_bytes = Path(busybox).read_bytes() if busybox is not None else None
    key = _cache_key(init_source, modules, busybox_bytes)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"initramfs-{key[:40]}.cpio"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as work:
        work_dir = Path(work)
        # Compile a private copy so the source path baked into nothing depends on the checkout.
        source_copy = work_dir / "hvinit.c"
        source_copy.write_bytes(init_source)
        binary = work_dir / "hvinit"
        compile_init(source_copy, binary)
        image = _archive(binary.read_bytes(), modules, busybox_bytes)
        partial = work_dir / "initramfs.cpio"
        partial.write_bytes(image)
        os.chmod(partial, 0o644)
        os.replace(partial, target)  # atomic: a concurrent builder writes the same bytes
    return target
