"""The unpacked size of an image is bounded while it unpacks (vmworker/images/unpack.py).

Real images through a real registry, skopeo and umoci: a gzip bomb (hundreds of MiB of zeros
in a layer of a few hundred KiB), sparse layers (a few KiB in the stream, every hole written by
umoci as real blocks) and hard links. Each abort must kill the work, leave no temp file in the
store and leave the cache exactly as it was.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.oci_images import PushedImage, push_image
from tests.support.registry import LocalRegistry
from tests.support.size_bomb_images import MIB, hidden_files_layer, image_from_layer, sparse_layer, zero_file_layer
from tests.vmworker.images.store_inspection import files_under, unexpected_store_files, work_dir_entries
from vmworker.failures import failure_is_transient
from vmworker.images import ImageStore, ImageUnpacksTooLarge, RegistryCredentials
from vmworker.images import unpack as unpack_module
from vmworker.images.fsimage import fs_image_max_bytes, make_filesystem_image
from vmworker.images.unpack import OverLimit, layer_stream_bytes, tree_bytes

GIB = 1024 * MIB
PLATFORM_LIMIT_BYTES = 16 * MIB


@pytest.fixture
def limited_store(store_root: Path) -> ImageStore:
    return ImageStore(store_root, max_cache_bytes=GIB, max_image_bytes=GIB, max_unpacked_bytes=PLATFORM_LIMIT_BYTES)


@pytest.fixture
def push_layer(tmp_path: Path, registry: LocalRegistry, registry_authfile: Path):
    def push(case: str, write_layer) -> str:
        tars = tmp_path / "tars"
        tars.mkdir(exist_ok=True)
        built = image_from_layer(case, write_layer(tars / f"{case}.tar"), tmp_path / "layouts")
        return push_image(
            built,
            registry=registry.host_port,
            repository_tag=f"hypervm-test/size-{case}:latest",
            authfile=registry_authfile,
        )

    return push


@pytest.fixture
def watchdog_kills(monkeypatch) -> list[int]:
    """The pids the watchdog stopped (a spy on unpack._watch): the proof it was the watchdog,
    not the check after umoci finished, that ended an unpack."""
    kills: list[int] = []
    watch = unpack_module._watch

    def spying_watch(pid, rootfs, max_bytes):
        try:
            return watch(pid, rootfs, max_bytes)
        except OverLimit:
            kills.append(pid)
            raise

    monkeypatch.setattr(unpack_module, "_watch", spying_watch)
    return kills


def store_state(store_root: Path) -> tuple[list[Path], str]:
    """The cached images and the index's bytes: what 'the cache is unchanged' compares (a
    per-digest build lock file may be new: it is created empty and kept, by design)."""
    index = store_root / "index.json"
    images = [path for path in files_under(store_root) if "locks" not in path.relative_to(store_root).parts]
    return images, index.read_text() if index.exists() else ""


@pytest.fixture
def warm_store(limited_store: ImageStore, test_images: dict[str, PushedImage], credentials) -> ImageStore:
    """A store holding one image already, so 'unchanged' is about a real cache."""
    limited_store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=False)
    return limited_store


def assert_aborted_cleanly(store_root: Path, before: tuple[list[Path], str]) -> None:
    assert work_dir_entries(store_root) == []
    assert unexpected_store_files(store_root) == []
    assert store_state(store_root) == before
    assert not any(p.name.startswith(".index.json") for p in store_root.iterdir())


def test_a_gzip_bomb_stops_at_the_platform_limit_before_umoci_runs(
    warm_store: ImageStore, store_root: Path, push_layer, credentials: RegistryCredentials
) -> None:
    reference = push_layer("gzip-bomb", lambda path: zero_file_layer(path, size_bytes=300 * MIB))
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge) as raised:
        warm_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert str(raised.value) == f"image {reference} unpacks to more than 16 MiB (platform limit)"
    assert not failure_is_transient(raised.value)
    assert_aborted_cleanly(store_root, before)


def test_the_tenant_quota_wins_when_it_is_smaller(
    warm_store: ImageStore, store_root: Path, push_layer, credentials: RegistryCredentials
) -> None:
    reference = push_layer("quota-bomb", lambda path: zero_file_layer(path, size_bytes=12 * MIB))
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge) as raised:
        warm_store.prepare(reference, credentials=credentials, tls_verify=False, quota_limit_bytes=4 * MIB)

    assert str(raised.value) == f"image {reference} unpacks to more than 4 MiB (tenant disk quota)"
    assert_aborted_cleanly(store_root, before)
    prepared = warm_store.prepare(reference, credentials=credentials, tls_verify=False, quota_limit_bytes=64 * MIB)
    assert 12 * MIB <= prepared.unpacked_bytes <= 13 * MIB  # the larger quota: the platform limit applies


@pytest.mark.parametrize(
    "case,layer,watchdog_kill_count",
    [
        # One 64 MiB sparse file: RLIMIT_FSIZE stops umoci at the limit (EFBIG), before the
        # watchdog could (the file, and so umoci's writes, cannot pass the limit + 4 KiB).
        ("sparse-one", lambda path: sparse_layer(path, hole_bytes=64 * MIB), 0),
        # 100 files of 12 MiB (1.2 GiB), each under the limit: the watchdog kills umoci.
        ("sparse-many", lambda path: sparse_layer(path, hole_bytes=12 * MIB, files=100), 1),
        # Hard links to a sparse file do not hide it.
        ("sparse-linked", lambda path: sparse_layer(path, hole_bytes=64 * MIB, links=3), 0),
    ],
)
def test_sparse_layers_are_stopped_while_umoci_unpacks(
    warm_store: ImageStore,
    store_root: Path,
    push_layer,
    credentials: RegistryCredentials,
    watchdog_kills: list[int],
    case: str,
    layer,
    watchdog_kill_count: int,
) -> None:
    reference = push_layer(case, layer)
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge) as raised:
        warm_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert len(watchdog_kills) == watchdog_kill_count
    assert "unpacks to more than 16 MiB (platform limit)" in str(raised.value)
    assert_aborted_cleanly(store_root, before)


def test_without_io_accounting_the_tree_walk_stops_umoci(
    warm_store: ImageStore,
    store_root: Path,
    push_layer,
    credentials: RegistryCredentials,
    monkeypatch,
    watchdog_kills: list[int],
) -> None:
    """Kernels without /proc/PID/io: the watchdog measures the tree instead."""
    monkeypatch.setattr(unpack_module, "written_bytes", lambda pid: None)
    reference = push_layer("sparse-walk", lambda path: sparse_layer(path, hole_bytes=12 * MIB, files=100))
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge):
        warm_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert len(watchdog_kills) == 1
    assert_aborted_cleanly(store_root, before)


def test_hard_links_are_counted_once(
    limited_store: ImageStore, store_root: Path, push_layer, credentials: RegistryCredentials
) -> None:
    # 6 MiB of data under 40 names: 240 MiB if every name counted, 6 MiB on disk.
    reference = push_layer("hardlinks", lambda path: zero_file_layer(path, size_bytes=6 * MIB, links=39))

    prepared = limited_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert 6 * MIB <= prepared.unpacked_bytes < 7 * MIB
    assert prepared.fs_path.is_file()


def test_a_cached_image_over_the_tenant_quota_is_refused_unless_the_tenant_holds_it(
    warm_store: ImageStore, store_root: Path, test_images: dict[str, PushedImage], credentials
) -> None:
    reference = test_images["printer"].reference
    cached = warm_store.prepare(reference, credentials=credentials, tls_verify=False)
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge) as raised:
        warm_store.prepare(reference, credentials=credentials, tls_verify=False, quota_limit_bytes=4096)

    assert "(tenant disk quota)" in str(raised.value)
    assert store_state(store_root)[0] == before[0]
    held = warm_store.prepare(
        reference,
        credentials=credentials,
        tls_verify=False,
        quota_limit_bytes=4096,
        quota_exempt_digests=frozenset({cached.manifest_digest}),
    )
    assert held.unpacked_bytes == cached.unpacked_bytes > 0


# The pieces, without a registry ---------------------------------------------------------------


def write_gzip_zeros(path: Path, *, size_bytes: int, members: int = 1) -> Path:
    with open(path, "wb") as raw:
        for _ in range(members):
            with gzip.GzipFile(fileobj=raw, mode="wb") as member:
                for _ in range(size_bytes // members // MIB):
                    member.write(bytes(MIB))
    return path


def test_the_stream_count_reads_every_gzip_member(tmp_path: Path) -> None:
    blob = write_gzip_zeros(tmp_path / "multi.gz", size_bytes=8 * MIB, members=4)

    assert layer_stream_bytes(blob, budget_bytes=GIB, timeout_s=60) == 8 * MIB
    with pytest.raises(OverLimit):
        layer_stream_bytes(blob, budget_bytes=7 * MIB, timeout_s=60)  # the limit lies in the last member


def test_the_stream_count_stops_a_zstd_bomb(tmp_path: Path) -> None:
    plain = tmp_path / "zeros"
    with open(plain, "wb") as handle:
        handle.truncate(512 * MIB)
    subprocess.run(
        ["zstd", "-q", "-19", "--rm", str(plain), "-o", str(tmp_path / "zeros.zst")], check=True, timeout=120
    )
    blob = tmp_path / "zeros.zst"
    assert blob.stat().st_size < 64 * 1024

    with pytest.raises(OverLimit):
        layer_stream_bytes(blob, budget_bytes=16 * MIB, timeout_s=60)


def test_the_tree_measure_counts_holes_and_each_inode_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "sparse", "wb") as handle:
        handle.truncate(32 * MIB)
    (tree / "data").write_bytes(b"x" * MIB)
    for index in range(10):
        os.link(tree / "data", tree / f"alias-{index}")

    measured = tree_bytes(tree)

    assert 33 * MIB <= measured < 33 * MIB + 64 * 1024
    assert json.dumps(measured)  # a plain int for the worker's report


def test_the_fs_image_cannot_grow_past_its_bound(tmp_path: Path) -> None:
    """mkfs runs under RLIMIT_FSIZE of fs_image_max_bytes(limit): a tree over the limit (were it to
    get there) cannot make a larger image file."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(24 * MIB))
    output = tmp_path / "rootfs.erofs"

    with pytest.raises(OverLimit):
        make_filesystem_image(
            tree,
            output,
            fs_type="erofs",
            manifest_digest="sha256:" + "c" * 64,
            source_date_epoch=0,
            timeout_s=60,
            max_tree_bytes=MIB,
        )

    assert not output.exists() or output.stat().st_size <= fs_image_max_bytes(MIB)


def empty_files_layer(path: Path, *, files: int) -> Path:
    """`files` empty files, written by GNU tar: a few KiB gzipped, nothing for the write counter."""
    source = path.parent / f"{path.stem}-source"
    source.mkdir()
    for index in range(files):
        (source / f"e{index}").touch()
    subprocess.run(["tar", "--format=pax", "-cf", str(path), "-C", str(source), "."], check=True, timeout=120)
    subprocess.run(["rm", "-rf", str(source)], check=True, timeout=120)
    return path


@pytest.fixture
def unpacks(monkeypatch) -> list[str]:
    """The images umoci was started for (a spy on the store's unpack_rootfs)."""
    from vmworker.images import store as store_module

    started: list[str] = []
    real_unpack = store_module.unpack_rootfs
    monkeypatch.setattr(
        store_module, "unpack_rootfs", lambda *a, **k: started.append(k["image"]) or real_unpack(*a, **k)
    )
    return started


def test_a_layer_of_more_files_than_the_limit_has_blocks_is_refused_before_umoci_makes_them(
    warm_store: ImageStore, store_root: Path, push_layer, credentials: RegistryCredentials, unpacks: list[str]
) -> None:
    """16 MiB is 4096 blocks of 4 KiB, the least each inode is charged: 5000 empty files (about
    5 KiB of gzipped layer) are refused by the stream count, and umoci never runs."""
    reference = push_layer("many-files", lambda path: empty_files_layer(path, files=5000))
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge) as raised:
        warm_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert str(raised.value) == f"image {reference} unpacks to more than 16 MiB (platform limit)"
    assert unpacks == []
    assert_aborted_cleanly(store_root, before)
    # Under the bound, the same kind of layer unpacks.
    fewer = push_layer("fewer-files", lambda path: empty_files_layer(path, files=2000))
    assert warm_store.prepare(fewer, credentials=credentials, tls_verify=False).unpacked_bytes >= 2000 * 4096


def test_files_hidden_behind_a_directory_size_are_counted_before_umoci_makes_them(
    warm_store: ImageStore, store_root: Path, push_layer, credentials: RegistryCredentials, unpacks: list[str]
) -> None:
    """A directory header whose size field spans 5000 empty files' headers: umoci (Go's reader
    reads no data after a directory) makes all 5000, so the stream count must see them too."""
    reference = push_layer("hidden-files", lambda path: hidden_files_layer(path, files=5000))
    before = store_state(store_root)

    with pytest.raises(ImageUnpacksTooLarge):
        warm_store.prepare(reference, credentials=credentials, tls_verify=False)

    assert unpacks == []
    assert_aborted_cleanly(store_root, before)
