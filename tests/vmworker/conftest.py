"""Fixtures for runtime/CLI tests that boot real HyperVMs: a state dir QEMU's user can traverse
(outside pytest's 0700 tmp tree), and cleanup of every instance a test made."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmworker import warm_pool
from vmworker.runtime import HyperVMRuntime, RuntimeSettings


@pytest.fixture(scope="session")
def runtime_state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hypervm-test-state-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=path))
    for status in runtime.list_instances():
        runtime.remove(status.instance_id)
    warm_pool.discard_all(runtime)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(runtime_state_dir: Path) -> Iterator[HyperVMRuntime]:
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=runtime_state_dir, boot_timeout_s=120))
    before = {status.instance_id for status in runtime.list_instances()}
    yield runtime
    for status in runtime.list_instances():
        if status.instance_id not in before:
            runtime.remove(status.instance_id)
