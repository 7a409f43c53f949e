"""The host's report on itself (vmworker.tasks.host_report, the heartbeat): what libvirt is asked
for may fail (libvirtd restarting) and the report still goes, without that part, so the portal
keeps the host up and decides nothing from what was not sent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vmworker import tasks
from vmworker.driver.errors import DriverError
from vmworker.driver.fake import FakeHost
from vmworker.runtime import HyperVMRuntime, RuntimeSettings


@pytest.fixture
def host_runtime(tmp_path: Path, monkeypatch) -> HyperVMRuntime:
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    monkeypatch.setattr(tasks, "runtime", lambda: runtime)
    registration = {"libvirt_uri": "test:///", "vcpus": 8, "memory_mib": 16384, "virt_type": "qemu", "probe_s": 0.1}
    monkeypatch.setattr(tasks, "_registration", registration)
    return runtime


def test_a_report_names_the_host_its_vms_and_volume_files(host_runtime) -> None:
    report = tasks.host_report("h", register=True)
    assert report["name"] == "h" and report["register"] is True and report["vcpus"] == 8
    assert report["instance_ids"] == [] and report["volume_names"] == [] and report["warm_pool"] == {}
    assert report["worker_started_at"] == tasks.WORKER_STARTED_AT


def test_a_report_goes_without_the_parts_libvirt_could_not_give(host_runtime, monkeypatch) -> None:
    def down(*args, **kwargs):
        raise DriverError("libvirtd is restarting")

    monkeypatch.setattr(host_runtime.host, "list_guests", down)
    monkeypatch.setattr(host_runtime.host, "list_volumes", down)
    report = tasks.host_report("h")
    assert "instance_ids" not in report and "volume_names" not in report
    assert report["name"] == "h" and report["virt_type"] == "qemu"


class _StatusRuntime:
    state_dir = Path("/nonexistent")  # no boot under way

    def __init__(self, states: dict):
        self.states = states

    def status(self, instance_id):
        from vmworker.runtime import InstanceNotFound

        if instance_id not in self.states:
            raise InstanceNotFound(instance_id)
        return SimpleNamespace(state=self.states[instance_id], ports=(1,))


def test_a_lost_running_report_goes_again_only_for_an_app_that_runs(monkeypatch) -> None:
    sent = []
    fake = _StatusRuntime({"a": "running", "b": "booting", "c": "exited"})
    monkeypatch.setattr(tasks, "runtime", lambda: fake)
    monkeypatch.setattr(tasks, "send_report", sent.append)
    for instance_id in ("a", "b", "c", "gone"):
        tasks._reconcile_booting(instance_id)
    assert [(r["instance_id"], r["state"], r["user_net"]) for r in sent] == [("a", "running", True)]
