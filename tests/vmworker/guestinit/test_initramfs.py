"""The initramfs builder: module selection, newc layout, determinism and the cache."""

import gzip
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmworker.guestinit import initramfs
from vmworker.guestinit.initramfs import (
    InitramfsError,
    NewcArchive,
    build_initramfs,
    resolve_guest_modules,
)

DEBIAN_KERNELS = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int], int, int, int]]:
    """name -> (mode, data, rdev, uid, gid, mtime): an independent reader for the tests."""
    entries = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        _, mode, uid, gid, _, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        body = data[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries[name] = (mode, body, (rmaj, rmin), uid, gid, mtime)


def _fake_module_tree(root: Path) -> Path:
    tree = root / "6.0.0-test"
    (tree / "kernel/a").mkdir(parents=True)
    (tree / "kernel/a/virtio_ring.ko").write_bytes(b"RING")
    (tree / "kernel/a/virtio.ko.xz").write_bytes(lzma.compress(b"VIRTIO"))
    (tree / "kernel/a/virtio_pci.ko.gz").write_bytes(gzip.compress(b"PCI"))
    (tree / "kernel/a/virtio-blk.ko").write_bytes(b"BLK")
    (tree / "kernel/a/virtio_net.ko").write_bytes(b"NET")
    (tree / "kernel/a/failover.ko").write_bytes(b"FAILOVER")
    (tree / "modules.dep").write_text(
        "kernel/a/virtio_ring.ko:\n"
        "kernel/a/virtio.ko.xz: kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio_pci.ko.gz: kernel/a/virtio.ko.xz kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio-blk.ko: kernel/a/virtio.ko.xz kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio_net.ko: kernel/a/failover.ko kernel/a/virtio.ko.xz\n"
        "kernel/a/failover.ko:\n"
    )
    (tree / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/fs/overlay.ko\n")
    return root


def test_modules_come_in_dependency_order_without_builtins(tmp_path):
    root = _fake_module_tree(tmp_path)

    modules = resolve_guest_modules(
        root,
        "6.0.0-test",
        core=("virtio_pci", "virtio_blk", "ext4", "overlay"),
        net=("virtio_net",),
    )

    assert [(m.group, m.name) for m in modules] == [
        ("core", "virtio_ring"),
        ("core", "virtio"),
        ("core", "virtio_pci"),
        ("core", "virtio_blk"),
        ("net", "failover"),
        ("net", "virtio_net"),
    ]


def test_a_missing_module_is_an_error(tmp_path):
    root = _fake_module_tree(tmp_path)

    with pytest.raises(InitramfsError, match="erofs"):
        resolve_guest_modules(root, "6.0.0-test", core=("erofs",), net=())


def test_debian_cloud_kernel_needs_these_modules():
    if not DEBIAN_KERNELS:
        pytest.fail("linux-image-cloud-amd64 is required")
    release = DEBIAN_KERNELS[-1].name.removeprefix("vmlinuz-")

    modules = resolve_guest_modules(Path("/lib/modules"), release)

    names = [m.name for m in modules]
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")
    assert names.index("libcrc32c") < names.index("erofs")
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    assert {"virtio_blk", "virtio_console", "overlay"} <= set(names)
    assert "ext4" not in names  # built into the cloud kernel


def test_newc_archive_layout():
    archive = NewcArchive()
    archive.add_directory("dev")
    archive.add_char_device("dev/console", 5, 1, 0o600)
    archive.add_file("init", b"\x7fELF12345", 0o755)

    entries = read_newc(archive.finish())

    assert list(entries) == ["dev", "dev/console", "init"]
    assert entries["dev/console"][0] == stat.S_IFCHR | 0o600
    assert entries["dev/console"][2] == (5, 1)
    assert entries["init"][:2] == (stat.S_IFREG | 0o755, b"\x7fELF12345")


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    root = _fake_module_tree(tmp_path / "modules")
    monkeypatch.setattr(initramfs, "CORE_MODULES", ("virtio_pci", "virtio_blk"))
    monkeypatch.setattr(initramfs, "NET_MODULES", ("virtio_net",))
    build = dict(kernel_release="6.0.0-test", modules_root=root)

    first = build_initramfs(**build, cache_dir=tmp_path / "cache-a")
    second = build_initramfs(**build, cache_dir=tmp_path / "cache-b")

    assert first.read_bytes() == second.read_bytes()
    assert first.name == second.name
    entries = read_newc(first.read_bytes())
    assert entries["lib/modules/virtio.ko"][1] == b"VIRTIO"  # xz decompressed on the host
    assert entries["lib/modules/virtio_pci.ko"][1] == b"PCI"  # gz too
    assert entries["lib/modules/hvm.order"][1] == (
        b"core virtio_ring.ko\ncore virtio.ko\ncore virtio_pci.ko\ncore virtio_blk.ko\n"
        b"net failover.ko\nnet virtio_net.ko\n"
    )
    assert all(uid == gid == mtime == 0 for _, _, _, uid, gid, mtime in entries.values())
    assert "bin/busybox" not in entries
    init_mode, init_binary, *_ = entries["init"]
    assert init_mode == stat.S_IFREG | 0o755 and init_binary.startswith(b"\x7fELF")
    file_type = subprocess.run(["file", "-b", "-"], input=init_binary, capture_output=True)
    if file_type.returncode == 0:
        assert b"statically linked" in file_type.stdout

    def no_compiling(*args, **kwargs):
        raise AssertionError("a cache hit must not compile")

    monkeypatch.setattr(initramfs, "compile_init", no_compiling)
    assert build_initramfs(**build, cache_dir=tmp_path / "cache-a") == first


def test_any_input_change_is_a_new_cache_entry(tmp_path, monkeypatch):
    root = _fake_module_tree(tmp_path / "modules")
    monkeypatch.setattr(initramfs, "CORE_MODULES", ("virtio_blk",))
    monkeypatch.setattr(initramfs, "NET_MODULES", ())
    build = dict(kernel_release="6.0.0-test", modules_root=root, cache_dir=tmp_path / "cache")
    plain = build_initramfs(**build)

    (root / "6.0.0-test/kernel/a/virtio-blk.ko").write_bytes(b"BLK v2")
    changed_module = build_initramfs(**build)
    with_busybox = build_initramfs(**build, busybox=Path(shutil.which("true")))

    assert len({plain, changed_module, with_busybox}) == 3
    assert read_newc(with_busybox.read_bytes())["bin/busybox"][0] == stat.S_IFREG | 0o755
