"""Celery pool processes of a host worker: each has its own runtime (never the parent's libvirt
connection) and has its initramfs and kernel ready before the first boot."""

from __future__ import annotations

import pytest

from vmworker import tasks


@pytest.fixture
def host_worker_env(monkeypatch, runtime_state_dir):
    monkeypatch.setenv("HYPERVM_HOST_NAME", "test-pool-process")
    monkeypatch.setenv("HYPERVM_STATE_DIR", str(runtime_state_dir))
    tasks.runtime.cache_clear()
    yield
    tasks.runtime.cache_clear()


def test_a_pool_process_makes_its_own_warm_runtime(host_worker_env):
    parents = tasks.runtime()
    tasks.fresh_runtime_per_process()
    own = tasks.runtime()
    assert own is not parents
    assert own._initramfs is not None and own._initramfs.is_file()
    assert own._kernel is not None and own._kernel.is_file()
