"""The runtime's stop without waiting (request_stop, stop_progress), its file modes and its listing, on the
fake driver: a stop request returns at once and keeps its first deadline; the stop ends at the
app's exit record, when its VM is gone, or when the deadline passes (the VM destroyed)."""

from __future__ import annotations

import json
import os
import pwd
import stat
import time
import uuid

import pytest

from tests.vmworker.test_runtime import fake_domain
from vmworker.driver.fake import FakeHost
from vmworker.runtime import STOP_KILL_MARGIN_S, HyperVMRuntime, RuntimeSettings


@pytest.fixture
def host():
    return FakeHost()


@pytest.fixture
def runtime(tmp_path, host):
    return HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state", socket_root=tmp_path / "run"), host=host)


def running_instance(runtime: HyperVMRuntime, host: FakeHost, tmp_path) -> str:
    instance_id = str(uuid.uuid4())
    directory = runtime.instance_dir(instance_id)
    directory.mkdir(parents=True)
    info = {"instance_id": instance_id, "name": "stubborn", "image": "x", "ports": [], "created_at": 1.0}
    (directory / "instance.json").write_text(json.dumps(info))
    (directory / "guest.log").write_bytes(b"init 1.0\nstarted 2.0\n")
    host.define_and_start(fake_domain(tmp_path, instance_id))
    return instance_id


def test_a_stop_request_returns_at_once_and_one_sent_again_keeps_the_first_deadline(runtime, host, tmp_path):
    instance_id = running_instance(runtime, host, tmp_path)
    started = time.monotonic()

    first = runtime.request_stop(instance_id, grace_s=300)
    again = runtime.request_stop(instance_id, grace_s=1)  # a re-delivered task: no new deadline

    assert time.monotonic() - started < STOP_KILL_MARGIN_S  # no control socket here: it gave up at once
    assert again == first == runtime.stop_request(instance_id)
    assert first.deadline - first.requested_at == 300 + STOP_KILL_MARGIN_S
    assert runtime.stop_progress(instance_id) is None  # the grace runs: the VM stays
    assert host.lookup(instance_id) is not None

    ended = runtime.stop_progress(instance_id, now=first.deadline)

    assert (ended.state, ended.exit_code, host.lookup(instance_id)) == ("lost", None, None)  # destroyed
    assert runtime.stop_progress(instance_id) == ended  # recorded: asked again, the same end


def test_a_stop_ends_at_the_apps_exit_record_before_its_deadline(runtime, host, tmp_path):
    instance_id = running_instance(runtime, host, tmp_path)
    runtime.request_stop(instance_id, grace_s=300)
    with open(runtime.instance_dir(instance_id) / "guest.log", "ab") as log:
        log.write(b"stopping 3.0\nout got SIGTERM\nexit 0\n")

    ended = runtime.stop_progress(instance_id)

    assert (ended.state, ended.exit_code, host.lookup(instance_id)) == ("exited", 0, None)


def test_a_stop_ends_at_once_when_the_vm_is_gone(runtime, host, tmp_path):
    instance_id = running_instance(runtime, host, tmp_path)
    host.lookup(instance_id).destroy()

    runtime.request_stop(instance_id, grace_s=300)

    assert runtime.stop_progress(instance_id).state == "lost"


def test_an_unreadable_stop_record_counts_from_its_time_with_the_default_grace(runtime, host, tmp_path):
    instance_id = running_instance(runtime, host, tmp_path)
    marker = runtime.instance_dir(instance_id) / "stop.requested"
    marker.write_bytes(b"\xff{not json")
    os.utime(marker, (1000.0, 1000.0))

    request = runtime.request_stop(instance_id, grace_s=300)

    assert request.deadline == 1000.0 + runtime.settings.stop_grace_s + STOP_KILL_MARGIN_S
    assert runtime.stop_progress(instance_id).state == "lost"  # long past: destroyed


def test_the_state_dir_and_instance_records_are_closed_to_other_users(runtime, host, tmp_path):
    instance_id = running_instance(runtime, host, tmp_path)
    runtime.request_stop(instance_id, grace_s=1)
    runtime.stop_progress(instance_id, now=time.time() + 60)
    directory = runtime.instance_dir(instance_id)

    cache = runtime.image_store.cache  # tenants' image contents
    for path in (runtime.state_dir, runtime.instances_dir, cache.root, cache.images_dir):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, (path, oct(mode))
        if os.geteuid() == 0:  # QEMU's group passes through to the files libvirt labels for it
            assert (mode, path.stat().st_gid) == (0o710, pwd.getpwnam("libvirt-qemu").pw_gid)
    for name in ("stop.requested", "ended.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_an_instance_with_garbage_records_is_left_out_of_the_listing_not_the_others(runtime, host, tmp_path):
    healthy = running_instance(runtime, host, tmp_path)
    garbage = running_instance(runtime, host, tmp_path)
    (runtime.instance_dir(garbage) / "instance.json").write_bytes(b'{"instance_id": \xff')

    assert [status.instance_id for status in runtime.list_instances()] == [healthy]
    assert runtime.prune_ended(retention_s=0) == []  # neither pruned while its domain lives
