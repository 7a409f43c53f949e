"""Fast start (issue 11): real paused blank VMs, claimed by boots (vmworker.warm_pool)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tenants.demo_image import HTTPD_INDEX_HTML, HTTPD_PORT
from tests.support.live_stack import free_port
from tests.vmworker.test_runtime import spec_for
from vmworker import warm_pool
from vmworker.driver.fake import FakeHost
from vmworker.driver.guest import GuestState
from vmworker.driver.spec import PortForward
from vmworker.runtime import BOOTING_DIR, BootFailed, HyperVMRuntime, RuntimeSettings

SHAPE = warm_pool.Shape(1, 128)


@pytest.fixture
def pooled_runtime(runtime_state_dir: Path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=runtime_state_dir, boot_timeout_s=120, warm_pool=True))
    yield runtime
    for status in runtime.list_instances():
        runtime.remove(status.instance_id)
    for pool_id in warm_pool.ready_vms(runtime):
        warm_pool.discard(runtime, pool_id)


def _get(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            assert time.monotonic() < deadline, "the app's port never answered"
            time.sleep(0.1)


@pytest.mark.vm
def test_a_pooled_start_serves_the_page_and_leaves_nothing_behind(pooled_runtime, test_images, registry_authfile):
    runtime = pooled_runtime
    pool_id = warm_pool.boot_blank(runtime, SHAPE)
    assert runtime.host.lookup(pool_id).state == GuestState.PAUSED
    assert runtime.list_instances() == []  # a blank VM is no instance
    port = free_port()
    spec = spec_for(test_images["httpd"], registry_authfile, ports=(PortForward("127.0.0.1", port, HTTPD_PORT),))
    phases = []
    result = runtime.boot(spec, on_phase=phases.append)
    assert result.start == "warm" and result.domain_name == f"hvm-{pool_id}"
    assert phases == ["pulling", "preparing", "booting"]
    assert _get(port) == HTTPD_INDEX_HTML
    assert warm_pool.ready_vms(runtime) == {}  # single-use
    guest = runtime.host.lookup(spec.instance_id)
    assert guest.name == f"hvm-{pool_id}" and guest.state == GuestState.RUNNING
    assert guest.metadata()["instance"] == spec.instance_id
    assert [status.instance_id for status in runtime.list_instances()] == [spec.instance_id]
    runtime.stop(spec.instance_id, timeout_s=20)
    runtime.remove(spec.instance_id)
    assert runtime.host.lookup(pool_id) is None
    assert not (warm_pool.pool_root(runtime) / pool_id).exists()
    # The pool refills after the claim.
    refilled = warm_pool.refill_one(runtime, warm_pool.PoolTarget(sizes={SHAPE: 1}, budget_mib=128))
    assert warm_pool.ready_vms(runtime) == {refilled: SHAPE}


@pytest.mark.vm
def test_two_instances_never_get_the_same_vm_and_an_empty_pool_boots_cold(
    pooled_runtime, test_images, registry_authfile
):
    runtime = pooled_runtime
    warm_pool.boot_blank(runtime, SHAPE)
    specs = [spec_for(test_images["sigterm"], registry_authfile, metadata={"tenant": t}) for t in ("a", "b")]
    first, second = (runtime.boot(spec) for spec in specs)
    assert (first.start, second.start) == ("warm", "cold")
    assert first.domain_name != second.domain_name
    assert warm_pool.ready_vms(runtime) == {}
    # A stopping host worker discards its blank VMs, never an instance started in one.
    blank = warm_pool.boot_blank(runtime, SHAPE)
    assert warm_pool.discard_unclaimed(runtime) == [blank]
    assert runtime.host.lookup(blank) is None and not (warm_pool.pool_root(runtime) / blank).exists()
    assert runtime.host.lookup(specs[0].instance_id).state == GuestState.RUNNING


@pytest.mark.vm
def test_a_pooled_vm_killed_while_paused_is_replaced(pooled_runtime):
    runtime = pooled_runtime
    target = warm_pool.PoolTarget(sizes={SHAPE: 1}, budget_mib=1024)
    killed = warm_pool.refill_one(runtime, target)
    assert warm_pool.refill_one(runtime, target) is None  # full
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", f"hvm-{killed}"], check=True, capture_output=True)
    assert warm_pool.sweep(runtime) == [killed]
    replacement = warm_pool.refill_one(runtime, target)
    assert replacement not in (None, killed)
    assert runtime.host.lookup(replacement).state == GuestState.PAUSED


def test_pool_setting_counts_and_budget():
    target = warm_pool.parse_pool_setting("1x128:2, 2x256:1", budget_mib=512)
    assert target.sizes == {SHAPE: 2, warm_pool.Shape(2, 256): 1}
    assert target.wanted({}) == SHAPE
    assert target.wanted({SHAPE: 2}) == warm_pool.Shape(2, 256)
    assert target.wanted({SHAPE: 2, warm_pool.Shape(2, 256): 1}) is None  # every count reached
    tight = warm_pool.parse_pool_setting("1x128:2, 2x256:1", budget_mib=384)
    assert tight.wanted({SHAPE: 2}) is None  # 256 MiB held + 256 would pass the budget
    assert warm_pool.parse_pool_setting("", 0).sizes == {}
    with pytest.raises(warm_pool.PoolConfigError):
        warm_pool.parse_pool_setting("128:2", 1024)


def test_boots_in_progress_follows_the_runtimes_marker(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path), host=FakeHost())
    assert not warm_pool.boots_in_progress(runtime)
    (tmp_path / BOOTING_DIR).mkdir()
    (tmp_path / BOOTING_DIR / "x").touch()
    assert warm_pool.boots_in_progress(runtime)


@pytest.mark.vm
def test_an_app_failing_in_a_pooled_vm_fails_once_without_a_cold_boot(pooled_runtime, test_images, registry_authfile):
    runtime = pooled_runtime
    pool_id = warm_pool.boot_blank(runtime, SHAPE)
    spec = spec_for(test_images["printer"], registry_authfile, entrypoint=("/no/such/program",))
    phases = []
    started = time.monotonic()
    with pytest.raises(BootFailed) as excinfo:
        runtime.boot(spec, on_phase=phases.append)
    elapsed = time.monotonic() - started
    assert excinfo.value.exit_code == 127 and "/no/such/program" in str(excinfo.value)
    # One start only: a cold boot after the failed claim would say "booting" twice.
    assert phases == ["pulling", "preparing", "booting"], (phases, elapsed)
    assert runtime.host.lookup(pool_id) is None and not (warm_pool.pool_root(runtime) / pool_id).exists()
    assert runtime.host.lookup(spec.instance_id) is None and runtime.list_instances() == []
    assert not runtime.instance_dir(spec.instance_id).exists()
