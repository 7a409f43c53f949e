"""The filesystem image: byte-identical across builds of one digest; ext4 fallback works."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.support.oci_images import PushedImage
from vmworker.images import ImageStore, RegistryCredentials
from vmworker.images.fsimage import uuid_for_digest

GIB = 1024 * 1024 * 1024
EXT4_MAGIC_OFFSET = 1024 + 0x38
EXT4_MAGIC = bytes.fromhex("53ef")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_stores_build_byte_identical_erofs_images(
    tmp_path: Path, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    reference = test_images["httpd"].reference
    first = ImageStore(tmp_path / "one", max_cache_bytes=GIB, max_image_bytes=GIB).prepare(
        reference, credentials=credentials, tls_verify=False
    )
    second = ImageStore(tmp_path / "two", max_cache_bytes=GIB, max_image_bytes=GIB).prepare(
        reference, credentials=credentials, tls_verify=False
    )

    assert first.fs_path != second.fs_path
    assert sha256_file(first.fs_path) == sha256_file(second.fs_path)
    superblock = subprocess.run(
        ["dump.erofs", "-s", str(first.fs_path)], capture_output=True, text=True, check=True
    ).stdout
    assert uuid_for_digest(first.manifest_digest) in superblock


def test_ext4_fallback_builds_a_readable_ext4_image(
    tmp_path: Path, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    store = ImageStore(tmp_path / "ext4", max_cache_bytes=GIB, max_image_bytes=GIB, fs_type="ext4")

    prepared = store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=False)

    assert prepared.fs_type == "ext4"
    assert prepared.fs_path.suffix == ".ext4"
    with prepared.fs_path.open("rb") as fs_image:
        fs_image.seek(EXT4_MAGIC_OFFSET)
        assert fs_image.read(2) == EXT4_MAGIC
    listing = subprocess.run(
        ["debugfs", "-R", "stat /bin/printer", str(prepared.fs_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "Mode:  0755" in listing
    fsck = subprocess.run(["e2fsck", "-fn", str(prepared.fs_path)], capture_output=True, text=True, timeout=60)
    assert fsck.returncode == 0, fsck.stdout
