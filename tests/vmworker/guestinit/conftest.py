"""Real boots of the guest init: QEMU (TCG), the Debian cloud kernel, our initramfs.

No libvirt here (the driver's tests do that): plain qemu-system-x86_64 with the
devices the driver gives a HyperVM (see tests/support/guest_qemu.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import guest_qemu
from vmworker.guestinit import GuestConfig, build_initramfs, write_config_disk


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    kernel = guest_qemu.guest_kernel()
    if kernel is None:
        pytest.fail("linux-image-cloud-amd64 is required for the boot tests")
    return kernel


@pytest.fixture(scope="session")
def guest_initramfs(guest_kernel, tmp_path_factory) -> Path:
    return build_initramfs(
        kernel_release=guest_kernel.name.removeprefix("vmlinuz-"),
        modules_root=Path("/lib/modules"),
        cache_dir=tmp_path_factory.mktemp("initramfs-cache"),
    )


@pytest.fixture(scope="session")
def rootfs_tree(tmp_path_factory) -> Path:
    if not guest_qemu.BUSYBOX.is_file():
        pytest.fail("busybox-static is required for the boot tests")
    return guest_qemu.make_busybox_tree(tmp_path_factory.mktemp("rootfs-tree") / "root")


@pytest.fixture(scope="session")
def erofs_rootfs(rootfs_tree, tmp_path_factory) -> Path:
    return guest_qemu.make_erofs(rootfs_tree, tmp_path_factory.mktemp("rootfs") / "rootfs.erofs")


@pytest.fixture
def ext4_rootfs(rootfs_tree, tmp_path) -> Path:
    return guest_qemu.make_ext4(rootfs_tree, tmp_path / "rootfs.ext4")


@pytest.fixture
def boot_guest(guest_kernel, guest_initramfs, tmp_path) -> Callable[..., guest_qemu.BootResult]:
    def boot(
        config: GuestConfig | None,
        *,
        rootfs: Path,
        config_image: bytes | None = None,
        **options,
    ) -> guest_qemu.BootResult:
        config_disk = tmp_path / "config.img"
        if config_image is not None:
            config_disk.write_bytes(config_image)
        else:
            write_config_disk(config, config_disk)
        return guest_qemu.boot_guest(
            kernel=guest_kernel,
            initramfs=guest_initramfs,
            rootfs=rootfs,
            config_disk=config_disk,
            work_dir=tmp_path,
            **options,
        )

    return boot
