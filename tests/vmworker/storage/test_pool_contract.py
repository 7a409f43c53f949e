"""The storage contract, run against the fake driver and real libvirtd (qemu:///system): the
host's dir pool is made idempotently, a volume is created through the pool API as a fresh file
(a new volume with an earlier one's name reads zeros), found again rather than remade, and
deleted through the pool API leaving no file and no pool entry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.storage_pools import remove_storage_pool
from vmworker.driver.errors import DriverError
from vmworker.driver.fake import FakeHost
from vmworker.driver.host import Host
from vmworker.storage.pool import MIB, StoragePool, StorageVolume, is_formatted, volume_format

BACKENDS = [pytest.param("fake", id="fake"), pytest.param("libvirt", id="libvirt-qemu")]


@pytest.fixture(params=BACKENDS)
def host(request) -> Iterator[Host | FakeHost]:
    made = FakeHost() if request.param == "fake" else Host("qemu:///system")
    yield made
    made.close()


@pytest.fixture
def pool(host, tmp_path: Path) -> Iterator[StoragePool]:
    directory = tmp_path / "volumes"
    directory.mkdir()
    made = StoragePool(name=f"hvm-vol-test-{uuid.uuid4().hex[:12]}", path=directory)
    yield made
    if isinstance(host, Host):
        remove_storage_pool(made.name)


def test_the_pool_is_made_once_and_a_second_ensure_changes_nothing(host, pool) -> None:
    host.pool_ensure(pool)
    host.pool_ensure(pool)

    assert host.list_volumes(pool.name) == []


def test_a_pool_of_the_same_name_elsewhere_is_refused(host, pool, tmp_path: Path) -> None:
    host.pool_ensure(pool)
    (tmp_path / "other").mkdir()

    with pytest.raises(DriverError, match="exists with another path"):
        host.pool_ensure(StoragePool(name=pool.name, path=tmp_path / "other"))


def test_a_volume_is_a_fresh_sparse_file_of_its_size_found_again_and_deleted(host, pool) -> None:
    host.pool_ensure(pool)
    volume = StorageVolume(name="hvvol-a", capacity_bytes=64 * MIB)

    path, created = host.volume_create(pool.name, volume)
    again_path, again_created = host.volume_create(pool.name, volume)

    assert (created, again_created) == (True, False)
    assert path == again_path == str(pool.path / "hvvol-a")
    assert Path(path).stat().st_size == 64 * MIB
    assert host.volume_allocation(pool.name, "hvvol-a") < MIB  # nothing written: sparse
    assert host.list_volumes(pool.name) == ["hvvol-a"]
    assert host.volume_delete(pool.name, "hvvol-a") is True
    assert not Path(path).exists()
    assert host.list_volumes(pool.name) == []
    assert host.volume_allocation(pool.name, "hvvol-a") is None
    assert host.volume_delete(pool.name, "hvvol-a") is True  # gone already: still done


def test_a_new_volume_never_shows_the_blocks_of_a_deleted_one(host, pool) -> None:
    host.pool_ensure(pool)
    volume = StorageVolume(name="hvvol-b", capacity_bytes=4 * MIB)
    path, _ = host.volume_create(pool.name, volume)
    Path(path).write_bytes(b"SECRET" * (MIB // 6))
    host.volume_delete(pool.name, "hvvol-b")

    path, created = host.volume_create(pool.name, volume)

    assert created
    assert Path(path).read_bytes() == b"\0" * (4 * MIB)


def test_a_volume_in_an_unknown_pool_is_refused(host) -> None:
    with pytest.raises(DriverError):
        host.volume_create(f"hvm-vol-missing-{uuid.uuid4().hex[:8]}", StorageVolume(name="x", capacity_bytes=MIB))


def superblock_uuid(path: str) -> bytes:
    with open(path, "rb") as device:
        device.seek(1024 + 0x68)  # s_uuid: a new mkfs writes a new one
        return device.read(16)


def test_a_new_volume_is_formatted_ext4_once(host, pool) -> None:
    host.pool_ensure(pool)
    path, _ = host.volume_create(pool.name, StorageVolume(name="hvvol-c", capacity_bytes=32 * MIB))
    assert not is_formatted(Path(path))

    volume_format(Path(path))
    first = superblock_uuid(path)
    volume_format(Path(path))  # a relaunch: the file system (and the app's data) stays

    assert is_formatted(Path(path))
    assert superblock_uuid(path) == first != b"\0" * 16
