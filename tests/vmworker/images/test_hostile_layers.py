"""Hostile layers must never touch the host. Each case documents what happens:

| case                                   | outcome   | why                                      |
|----------------------------------------|-----------|------------------------------------------|
| `../../<host path>` file               | contained | umoci clamps the name into the rootfs    |
| absolute `/<host path>` file           | contained | same: lands at rootfs/<host path>        |
| symlink to a host dir, write through   | contained | symlinks are resolved inside the rootfs  |
| relative `../..` symlink, write through| contained | same                                     |
| symlink to a host file, then overwrite | contained | the entry replaces the link, not target  |
| whiteout `../<host path>/.wh.x`        | contained | whiteouts resolve inside the rootfs too  |
| hardlink to an absolute host file      | refused   | ImageInvalid: no such target in rootfs   |
| hardlink via `..` to a host file       | refused   | ImageInvalid                             |
| hardlink through a symlink to the host | refused   | ImageInvalid                             |
| device nodes (char, block, fifo)       | contained | kept in the fs image, for the guest (*)  |
| setuid/setgid files and dirs           | contained | kept in the fs image, for the guest (*)  |
| hardlink to a file inside the tree     | allowed   | the control case: not every link refused |

(*) On the host they exist only in the store's 0700 root-only work dir while the image is
built, and are deleted right after; the fs image is a 0444 regular file the host never mounts.

"Contained" is checked three ways: the canary dir outside the tree is byte-for-byte untouched
(same entries, contents, inode and link count), the hostile entry is found *inside* the built
filesystem image where the clamping put it, and nothing setuid, special or executable is left
anywhere under the store root on the host. Python's tarfile is used here only to WRITE the
hostile layers; unpacking is umoci's job.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.oci_images import build_image_from_layer_tars, push_image
from tests.support.registry import LocalRegistry
from tests.vmworker.images.store_inspection import (
    dangerous_host_files,
    erofs_entry,
    unexpected_store_files,
    work_dir_entries,
)
from vmworker.images import ImageInvalid, ImageStore, PreparedImage, RegistryCredentials

CANARY_CONTENT = b"host canary: must never change\n"
HOSTILE_CONTENT = b"pwned\n"
ESCAPE_DEPTH = "../" * 24


@dataclass(frozen=True)
class TarEntry:
    name: str
    kind: bytes = tarfile.REGTYPE
    content: bytes = HOSTILE_CONTENT
    mode: int = 0o644
    linkname: str = ""
    device: tuple[int, int] = (0, 0)
    uid: int = 0


def write_layer_tar(path: Path, entries: list[TarEntry]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as layer:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode
            info.linkname = entry.linkname
            info.uid = info.gid = entry.uid
            info.mtime = 1_700_000_000
            info.devmajor, info.devminor = entry.device
            if entry.kind == tarfile.REGTYPE:
                info.size = len(entry.content)
                layer.addfile(info, io.BytesIO(entry.content))
            else:
                layer.addfile(info)
    return path


@dataclass
class HostCanary:
    directory: Path
    file: Path

    def snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        state = {}
        for path in sorted(self.directory.rglob("*")):
            stat = path.lstat()
            state[str(path)] = (stat.st_ino, stat.st_nlink, path.read_bytes())
        return state


@pytest.fixture
def host_canary(tmp_path: Path) -> HostCanary:
    directory = tmp_path / "host-canary"
    directory.mkdir()
    canary = directory / "canary.txt"
    canary.write_bytes(CANARY_CONTENT)
    return HostCanary(directory=directory, file=canary)


@pytest.fixture
def prepare_layers(
    tmp_path: Path,
    registry: LocalRegistry,
    registry_authfile: Path,
    store: ImageStore,
    credentials: RegistryCredentials,
):
    def prepare(case: str, layers: list[list[TarEntry]]) -> PreparedImage:
        tar_dir = tmp_path / "tars"
        tar_dir.mkdir(exist_ok=True)
        tars = [write_layer_tar(tar_dir / f"{case}-{index}.tar", entries) for index, entries in enumerate(layers)]
        built = build_image_from_layer_tars(case, tars, tmp_path / "layouts")
        reference = push_image(
            built,
            registry=registry.host_port,
            repository_tag=f"hypervm-test/hostile-{case}:latest",
            authfile=registry_authfile,
        )
        return store.prepare(reference, credentials=credentials, tls_verify=False)

    return prepare


@pytest.fixture
def assert_host_untouched(host_canary: HostCanary, store_root: Path):
    before = host_canary.snapshot()
    yield
    assert host_canary.snapshot() == before
    assert host_canary.file.read_bytes() == CANARY_CONTENT
    assert host_canary.file.stat().st_nlink == 1
    if store_root.exists():
        assert work_dir_entries(store_root) == []
        assert unexpected_store_files(store_root) == []
        assert dangerous_host_files(store_root) == []


def in_image_path(host_path: Path) -> str:
    """Where clamping puts an escape aimed at host_path: the same path inside the rootfs."""
    return str(host_path)


@pytest.mark.usefixtures("assert_host_untouched")
def test_dotdot_file_lands_inside_the_tree(prepare_layers, host_canary: HostCanary) -> None:
    target = host_canary.directory / "dotdot.txt"

    prepared = prepare_layers("dotdot", [[TarEntry(ESCAPE_DEPTH + str(target).lstrip("/"))]])

    assert not target.exists()
    assert erofs_entry(prepared.fs_path, in_image_path(target)) is not None


@pytest.mark.usefixtures("assert_host_untouched")
def test_absolute_file_lands_inside_the_tree(prepare_layers, host_canary: HostCanary) -> None:
    target = host_canary.directory / "absolute.txt"

    prepared = prepare_layers("absolute", [[TarEntry(str(target))]])

    assert not target.exists()
    assert erofs_entry(prepared.fs_path, in_image_path(target)) is not None


@pytest.mark.usefixtures("assert_host_untouched")
def test_write_through_symlink_to_host_dir_lands_inside_the_tree(prepare_layers, host_canary: HostCanary) -> None:
    layers = [
        [
            TarEntry("escape", tarfile.SYMTYPE, linkname=str(host_canary.directory)),
            TarEntry("escape/through-symlink.txt"),
            TarEntry("escape/canary.txt"),
            TarEntry("up", tarfile.SYMTYPE, linkname=ESCAPE_DEPTH.rstrip("/")),
            TarEntry("up" + str(host_canary.directory / "relative.txt")),
        ],
        [TarEntry("escape/second-layer.txt")],  # the symlink from the layer below
    ]

    prepared = prepare_layers("symlink-write", layers)

    for name in ("through-symlink.txt", "relative.txt", "second-layer.txt"):
        assert not (host_canary.directory / name).exists()
        assert erofs_entry(prepared.fs_path, str(host_canary.directory / name)) is not None
    assert "symlink" in (erofs_entry(prepared.fs_path, "/escape") or "")


@pytest.mark.usefixtures("assert_host_untouched")
def test_overwriting_a_symlink_to_a_host_file_replaces_the_link(prepare_layers, host_canary: HostCanary) -> None:
    layers = [
        [TarEntry("link-to-host", tarfile.SYMTYPE, linkname=str(host_canary.file))],
        [TarEntry("link-to-host", mode=0o777)],
    ]

    prepared = prepare_layers("symlink-overwrite", layers)

    assert "regular file" in (erofs_entry(prepared.fs_path, "/link-to-host") or "")


@pytest.mark.usefixtures("assert_host_untouched")
def test_whiteout_aimed_outside_the_tree_deletes_nothing(prepare_layers, host_canary: HostCanary) -> None:
    whiteout = ESCAPE_DEPTH + str(host_canary.directory / ".wh.canary.txt").lstrip("/")

    prepare_layers("whiteout", [[TarEntry("keep.txt")], [TarEntry(whiteout)]])

    assert host_canary.file.exists()


@pytest.mark.parametrize(
    "case,layer",
    [
        (
            "hardlink-absolute",
            lambda canary: [TarEntry("stolen", tarfile.LNKTYPE, linkname=canary)],
        ),
        (
            "hardlink-dotdot",
            lambda canary: [TarEntry("stolen", tarfile.LNKTYPE, linkname=ESCAPE_DEPTH + canary.lstrip("/"))],
        ),
        (
            "hardlink-via-symlink",
            lambda canary: [
                TarEntry("escape", tarfile.SYMTYPE, linkname=os.path.dirname(canary)),
                TarEntry("stolen", tarfile.LNKTYPE, linkname="escape/canary.txt"),
                TarEntry("stolen", content=HOSTILE_CONTENT),  # and then write through it
            ],
        ),
    ],
)
@pytest.mark.usefixtures("assert_host_untouched")
def test_hardlink_to_a_host_file_is_refused(prepare_layers, host_canary: HostCanary, case: str, layer) -> None:
    with pytest.raises(ImageInvalid) as raised:
        prepare_layers(case, [layer(str(host_canary.file))])

    assert str(raised.value).startswith("image ")
    assert "cannot be unpacked safely" in str(raised.value)


@pytest.mark.usefixtures("assert_host_untouched")
def test_hardlink_inside_the_tree_is_allowed(prepare_layers) -> None:
    layers = [
        [
            TarEntry("real.txt"),
            TarEntry("alias.txt", tarfile.LNKTYPE, linkname="real.txt"),
        ]
    ]

    prepared = prepare_layers("hardlink-inside", layers)

    assert "Links: 2" in (erofs_entry(prepared.fs_path, "/alias.txt") or "")


@pytest.mark.usefixtures("assert_host_untouched")
def test_device_nodes_exist_only_inside_the_fs_image(prepare_layers, store_root: Path) -> None:
    layers = [
        [
            TarEntry("dev-mem", tarfile.CHRTYPE, mode=0o666, device=(1, 1)),
            TarEntry("host-disk", tarfile.BLKTYPE, mode=0o666, device=(8, 0)),
            TarEntry("pipe", tarfile.FIFOTYPE, mode=0o666),
        ]
    ]

    prepared = prepare_layers("devices", layers)

    assert "char dev" in (erofs_entry(prepared.fs_path, "/dev-mem") or "")
    assert "block dev" in (erofs_entry(prepared.fs_path, "/host-disk") or "")
    assert prepared.fs_path.stat().st_mode & 0o7777 == 0o444


@pytest.mark.usefixtures("assert_host_untouched")
def test_setuid_files_exist_only_inside_the_fs_image(prepare_layers, store_root: Path) -> None:
    layers = [
        [
            TarEntry("suid-root", content=b"#!/bin/sh\nid\n", mode=0o4755),
            TarEntry("sgid-dir", tarfile.DIRTYPE, mode=0o2777),
            TarEntry("sgid-dir/sgid-file", content=b"#!/bin/sh\n", mode=0o2755, uid=65534),
        ]
    ]

    prepared = prepare_layers("setuid", layers)

    assert erofs_entry(prepared.fs_path, "/suid-root") is not None
    assert "Uid: 65534" in (erofs_entry(prepared.fs_path, "/sgid-dir/sgid-file") or "")
    assert store_root.stat().st_mode & 0o777 == 0o711  # traversable for QEMU, not listable
    assert (store_root / "work").stat().st_mode & 0o777 == 0o700
