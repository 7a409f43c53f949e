"""Boot probe: on dev/CI hosts /dev/kvm exists but cannot boot a stock kernel, so TCG must win."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmworker.driver.designer import DesignPolicy
from vmworker.driver.fake import FakeHost
from vmworker.driver.host import Host
from vmworker.driver.probe import KVM_DEVICE, PROBE_NAME_PREFIX, ProbeFailed, probe_virt_type


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_a_forced_virt_type_is_used_without_booting_anything(
    virt_type: str, vm_workdir: Path, guest_kernel: Path
) -> None:
    host = FakeHost()

    result = probe_virt_type(host, kernel=guest_kernel, work_dir=vm_workdir / "probe", force=virt_type)

    assert (result.virt_type, result.forced, result.attempts) == (virt_type, True, ())
    assert host.list_guests() == []


def test_an_unknown_forced_virt_type_is_refused(vm_workdir: Path, guest_kernel: Path) -> None:
    with pytest.raises(ValueError, match="force"):
        probe_virt_type(FakeHost(), kernel=guest_kernel, work_dir=vm_workdir, force="xen")


@pytest.mark.vm
def test_the_probe_chooses_tcg_on_a_host_whose_kvm_cannot_boot(vm_workdir: Path, guest_kernel: Path) -> None:
    assert KVM_DEVICE.exists(), "this test proves the fallback on hosts that expose /dev/kvm"
    host = Host("qemu:///system")
    try:
        result = probe_virt_type(host, kernel=guest_kernel, work_dir=vm_workdir / "probe", timeout_s=10)

        assert result.virt_type == "qemu"
        assert not result.forced
        kvm, tcg = result.attempts
        assert (kvm.virt_type, kvm.succeeded) == ("kvm", False)
        assert (tcg.virt_type, tcg.succeeded) == ("qemu", True)
        assert 0 < result.boot_s < 10
        # Every probe domain (the failed KVM one included) is gone.
        assert not {attempt.domain_name for attempt in result.attempts} & {g.name for g in host.list_guests()}
    finally:
        host.close()
    print(f"probe: {result}")


@pytest.mark.vm
def test_a_kvm_attempt_that_hangs_is_timed_out_and_destroyed(vm_workdir: Path, guest_kernel: Path) -> None:
    # With QEMU's default CPU model (no host-passthrough) KVM on these hosts hangs instead of aborting.
    host = Host("qemu:///system", design_policy=DesignPolicy(kvm_cpu_mode=None))
    try:
        with pytest.raises(ProbeFailed, match="kvm: ") as failure:
            probe_virt_type(
                host, kernel=guest_kernel, work_dir=vm_workdir / "probe-hang", timeout_s=5, candidates=("kvm",)
            )

        [attempt] = failure.value.attempts
        assert (attempt.virt_type, attempt.succeeded) == ("kvm", False)
        assert attempt.domain_name.startswith(PROBE_NAME_PREFIX)
        assert attempt.domain_name not in {g.name for g in host.list_guests()}
        leftover = subprocess.run(["pgrep", "-f", f"guest={attempt.domain_name}"], capture_output=True, text=True)
        assert leftover.stdout == ""
    finally:
        host.close()
