"""PVH kernel extraction: the Debian cloud bzImage becomes a bootable uncompressed vmlinux."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.vmworker.driver.backends import INIT_POWEROFF, SENTINEL, Backend
from vmworker.driver.guest import GuestState
from vmworker.driver.kernel import has_pvh_entry, pvh_kernel_for
from vmworker.driver.probe import wait_for_console_text


def test_the_cloud_kernel_yields_a_cached_world_readable_pvh_vmlinux(guest_kernel: Path, tmp_path: Path) -> None:
    vmlinux = pvh_kernel_for(guest_kernel, tmp_path / "kernels")

    assert vmlinux != guest_kernel
    assert has_pvh_entry(vmlinux.read_bytes())
    assert stat.S_IMODE(vmlinux.stat().st_mode) == 0o644
    assert pvh_kernel_for(guest_kernel, tmp_path / "kernels") == vmlinux
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [vmlinux.name]


def test_a_file_that_is_not_a_bzimage_is_used_as_it_is(tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"\0" * 4096)

    assert pvh_kernel_for(not_a_kernel, tmp_path / "kernels") == not_a_kernel


def test_an_elf_without_the_xen_pvh_note_is_not_pvh() -> None:
    assert not has_pvh_entry(Path("/bin/busybox").read_bytes())


@pytest.mark.vm
def test_the_pvh_vmlinux_boots_through_libvirt(qemu_backend: Backend, guest_kernel: Path, vm_workdir: Path) -> None:
    vmlinux = pvh_kernel_for(guest_kernel, vm_workdir / "kernels")
    spec = qemu_backend.spec(kernel=vmlinux, init_script=INIT_POWEROFF)

    guest = qemu_backend.host.define_and_start(spec)

    assert wait_for_console_text(spec.console_log, SENTINEL, timeout_s=30) is not None
    assert guest.wait_until_stopped(timeout_s=30) == GuestState.ABSENT
