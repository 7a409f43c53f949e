"""Driver test fixtures: a 0755 work dir QEMU can read, tiny initramfs images, and backends.

Real VMs: domains are named ``hvm-drvtest-<uuid>`` and every one a test makes is destroyed (and
undefined) in teardown. Files QEMU opens itself (initrd, disks) must be reachable by the
``libvirt-qemu`` user, hence the world-traversable work dir outside pytest's 0700 tmp tree.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmworker.driver.backends import BUSYBOX, TEST_NAME_PREFIX, Backend, InitramfsFactory, make_backend
from vmworker.driver.kernel import pvh_kernel_for
from vmworker.driver.probe import find_guest_kernel
from vmworker.driver.probe_initramfs import build_probe_initramfs


@pytest.fixture(scope="session")
def vm_workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=TEST_NAME_PREFIX, dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    return find_guest_kernel()


@pytest.fixture(scope="session")
def boot_kernel(guest_kernel: Path, vm_workdir: Path) -> Path:
    """What the driver tests boot: the PVH vmlinux (faster under TCG) made from guest_kernel."""
    return pvh_kernel_for(guest_kernel, vm_workdir / "kernels")


@pytest.fixture(scope="session")
def tiny_initramfs(vm_workdir: Path) -> InitramfsFactory:
    """``tiny_initramfs(init_script, modules=())`` -> path of a cached initramfs for it."""

    def build(init_script: str, modules: tuple[Path, ...] = ()) -> Path:
        key = hashlib.sha256(init_script.encode() + repr(modules).encode()).hexdigest()[:16]
        path = vm_workdir / f"initramfs-{key}.cpio"
        if not path.exists():
            # Uncompressed: TCG spends less time copying than it would inflating gzip.
            data = build_probe_initramfs(busybox=BUSYBOX, init_script=init_script, modules=modules, compress=False)
            path.write_bytes(data)
            path.chmod(0o644)
        return path

    return build


@pytest.fixture
def qemu_backend(vm_workdir: Path, boot_kernel: Path, tiny_initramfs: InitramfsFactory) -> Iterator[Backend]:
    backend = make_backend("qemu", vm_workdir, boot_kernel, tiny_initramfs)
    yield backend
    backend.cleanup()
