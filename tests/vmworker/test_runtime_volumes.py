"""Persistent volumes in real HyperVMs (libvirtd + QEMU under TCG, the real guest init): a
volume made in the host's storage pool is mounted at $MESOS_SANDBOX/<containerPath>, writable by
the app's user; what one instance wrote the next instance on the same volume reads; a volume
deleted through the pool API and made again starts empty; another volume never shows it."""

from __future__ import annotations

import uuid

import pytest

from tests.support.storage_pools import remove_storage_pool
from tests.vmworker.test_runtime import spec_for
from vmworker.guestinit.config import MESOS_SANDBOX
from vmworker.guestinit.protocol import OutputLine
from vmworker.runtime import VolumeAttachment

COUNTER = (
    'f="$MESOS_SANDBOX/data/count"; n=$(cat "$f" 2>/dev/null || echo 0); n=$((n+1)); '
    'echo "$n" > "$f" && sync && echo "count=$n as $(id -u)"'
)


@pytest.fixture
def pool_name(runtime):
    name = f"hvm-vol-test-{uuid.uuid4().hex[:10]}"
    yield name
    remove_storage_pool(name)


def volume(pool_name: str, name: str = "hvvol-counter") -> VolumeAttachment:
    return VolumeAttachment(
        volume_id=str(uuid.uuid4()), pool_name=pool_name, volume_name=name, size_mib=64, container_path="data"
    )


def run_counter(runtime, image, authfile, attachment: VolumeAttachment, *, user: str = "0") -> str:
    spec = spec_for(
        image,
        authfile,
        shell_command=COUNTER,
        env={"MESOS_SANDBOX": MESOS_SANDBOX},
        user=user,
        volumes=(attachment,),
    )
    runtime.boot(spec)
    lines = [r.text for r in runtime.follow(spec.instance_id) if isinstance(r, OutputLine)]
    status = runtime.status(spec.instance_id)
    runtime.remove(spec.instance_id)
    assert status.exit_code == 0, lines
    return next(line for line in lines if line.startswith("count="))


@pytest.mark.vm
def test_a_counter_on_a_volume_grows_across_instances_and_starts_over_on_a_new_volume(
    runtime, pool_name, test_images, registry_authfile
):
    image = test_images["printer"]
    counter = volume(pool_name)

    # The volume's root belongs to the app's user, not only root can write it.
    assert run_counter(runtime, image, registry_authfile, counter, user="1000:1000") == "count=1 as 1000"
    assert run_counter(runtime, image, registry_authfile, counter, user="1000:1000") == "count=2 as 1000"
    assert run_counter(runtime, image, registry_authfile, volume(pool_name, "hvvol-other")) == "count=1 as 0"

    assert runtime.volume_delete(pool_name, counter.volume_name)
    assert counter.volume_name not in runtime.host.list_volumes(pool_name)
    assert run_counter(runtime, image, registry_authfile, counter) == "count=1 as 0"
