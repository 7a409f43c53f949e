"""The driver contract, run against the fake, libvirt's test:///default and real qemu:///system.

What every implementation must do: start a domain for an instance (named ``<prefix><uuid>``, the
instance UUID as domain UUID, our metadata readable), return the same domain when the same
instance is started again, look instances up, list only domains with our metadata, refuse a
name taken by another UUID, destroy idempotently, notice a guest that powered itself off, and
measure running guests (CPU time, memory) one by one and all at once.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmworker.driver.backends import (
    INIT_POWEROFF,
    SENTINEL,
    TEST_NAME_PREFIX,
    Backend,
    InitramfsFactory,
    make_backend,
)
from vmworker.driver.config import ChannelConfig, DiskConfig, InterfaceConfig
from vmworker.driver.errors import DomainExists, DomainNotFound, DriverError
from vmworker.driver.guest import GuestState
from vmworker.driver.probe import wait_for_console_text
from vmworker.driver.spec import InterfaceSpec, PortForward
from vmworker.network.tenant import instance_mac

BACKENDS = [
    pytest.param("fake", id="fake"),
    pytest.param("test", id="libvirt-test"),
    pytest.param("qemu", id="libvirt-qemu", marks=pytest.mark.vm),
]


@pytest.fixture(params=BACKENDS)
def backend(request, vm_workdir: Path, boot_kernel: Path, tiny_initramfs: InitramfsFactory) -> Iterator[Backend]:
    made = make_backend(request.param, vm_workdir, boot_kernel, tiny_initramfs)
    yield made
    made.cleanup()


def test_start_makes_a_running_domain_named_after_the_instance(backend: Backend) -> None:
    spec = backend.spec()

    guest = backend.host.define_and_start(spec)

    assert guest.name == f"{TEST_NAME_PREFIX}{spec.instance_id}"
    assert guest.instance_id == spec.instance_id
    assert guest.state == GuestState.RUNNING
    assert guest.metadata() == {"tenant": "tenant-a", "app": "web", "instance": spec.instance_id}


def test_starting_the_same_instance_twice_returns_the_existing_domain(backend: Backend) -> None:
    spec = backend.spec()
    first = backend.host.define_and_start(spec)

    second = backend.host.define_and_start(spec)

    assert second == first
    assert [guest.instance_id for guest in backend.host.list_guests()].count(spec.instance_id) == 1


def test_lookup_finds_started_instances_and_nothing_else(backend: Backend) -> None:
    spec = backend.spec()
    backend.host.define_and_start(spec)

    assert backend.host.lookup(spec.instance_id).name == spec.domain_name
    assert backend.host.lookup(str(uuid.uuid4())) is None
    with pytest.raises(DomainNotFound):
        backend.host.get_guest(str(uuid.uuid4()))


def test_list_guests_returns_only_domains_with_our_metadata(backend: Backend) -> None:
    spec = backend.spec()
    backend.host.define_and_start(spec)
    foreign_uuid = backend.define_foreign_domain()

    listed = {guest.instance_id for guest in backend.host.list_guests()}

    assert spec.instance_id in listed
    # The driver does see the foreign domain (same libvirt state), it just is not ours.
    assert backend.host.lookup(foreign_uuid) is not None
    assert foreign_uuid not in listed


def test_a_name_taken_by_another_uuid_is_refused(backend: Backend) -> None:
    spec = backend.spec()
    backend.define_foreign_domain(name=spec.domain_name)

    with pytest.raises(DomainExists):
        backend.host.define_and_start(spec)


def test_our_uuid_held_by_a_domain_of_another_name_is_refused(backend: Backend) -> None:
    spec = backend.spec()
    backend.define_foreign_domain(domain_uuid=spec.instance_id)

    with pytest.raises(DomainExists):
        backend.host.define_and_start(spec)


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
def test_a_domain_that_cannot_start_leaves_nothing_behind(backend: Backend, persistent: bool) -> None:
    if backend.kind == "test":
        pytest.skip("libvirt's test driver starts domains without opening their kernel")
    spec = backend.spec(kernel=backend.workdir / "no-such-vmlinuz")

    with pytest.raises(DriverError, match="no-such-vmlinuz"):
        backend.host.define_and_start(spec, persistent=persistent)

    assert backend.host.lookup(spec.instance_id) is None


def test_destroy_removes_a_transient_domain_and_is_idempotent(backend: Backend) -> None:
    spec = backend.spec()
    guest = backend.host.define_and_start(spec)

    guest.destroy()
    guest.destroy()

    assert guest.state == GuestState.ABSENT
    assert backend.host.lookup(spec.instance_id) is None
    assert spec.instance_id not in {g.instance_id for g in backend.host.list_guests()}


def test_a_persistent_domain_shuts_off_on_destroy_and_goes_on_undefine(backend: Backend) -> None:
    spec = backend.spec()
    guest = backend.host.define_and_start(spec, persistent=True)
    assert guest.is_persistent

    guest.destroy()
    assert guest.state == GuestState.SHUTOFF
    assert backend.host.define_and_start(spec, persistent=True) == guest  # still one domain
    guest.undefine()

    assert guest.state == GuestState.ABSENT


def test_the_domain_reads_back_with_our_devices(backend: Backend) -> None:
    spec = backend.spec(port_forwards=(PortForward("127.0.0.1", 18080, 8080),))
    guest = backend.host.define_and_start(spec)

    config = guest.config()

    assert config.uuid == spec.instance_id
    assert config.memory_mib == spec.memory_mib
    assert config.os.kernel == str(spec.kernel)
    assert config.on_poweroff == "destroy"
    [disk] = config.devices_of(DiskConfig)
    assert (disk.serial, disk.readonly, disk.target_bus) == ("hvm-rootfs", True, "virtio")
    channels = {channel.target_name: channel.source.kind for channel in config.devices_of(ChannelConfig)}
    assert channels == {"io.hypervm.out": "file", "io.hypervm.control": "unix"}
    if backend.kind != "test":  # libvirt's test driver drops the qemu: namespace it cannot run
        assert "hostfwd=tcp:127.0.0.1:18080-:8080" in ",".join(config.qemu_commandline.args)


def test_a_tenant_network_is_ensured_idempotently_and_listed(backend: Backend) -> None:
    network = backend.tenant_network()

    backend.host.network_ensure(network)
    backend.host.network_ensure(network)

    assert backend.host.list_networks().count(network.libvirt_name) == 1


def test_a_nic_on_a_missing_tenant_network_is_refused_and_leaves_nothing(backend: Backend) -> None:
    if backend.kind == "test":
        pytest.skip("libvirt's test driver starts domains without looking up their networks")
    network = backend.tenant_network()
    instance_id = str(uuid.uuid4())
    nic = InterfaceSpec(network=network.libvirt_name, mac=instance_mac(instance_id, "tenant"))
    spec = backend.spec(instance_id=instance_id, interfaces=(nic,))

    with pytest.raises(DriverError, match=network.libvirt_name):
        backend.host.define_and_start(spec)

    assert backend.host.lookup(instance_id) is None


def test_a_nic_on_a_tenant_network_reads_back(backend: Backend) -> None:
    network = backend.tenant_network()
    instance_id = str(uuid.uuid4())
    mac = instance_mac(instance_id, "tenant")
    spec = backend.spec(instance_id=instance_id, interfaces=(InterfaceSpec(network=network.libvirt_name, mac=mac),))

    backend.host.network_ensure(network)
    guest = backend.host.define_and_start(spec)

    [nic] = guest.config().devices_of(InterfaceConfig)
    assert (nic.network, nic.mac, nic.model) == (network.libvirt_name, mac, "virtio")


def test_a_tenant_network_in_use_is_not_removed_until_its_domains_are_gone(backend: Backend) -> None:
    network = backend.tenant_network()
    backend.host.network_ensure(network)
    instance_id = str(uuid.uuid4())
    nic = InterfaceSpec(network=network.libvirt_name, mac=instance_mac(instance_id, "tenant"))
    guest = backend.host.define_and_start(backend.spec(instance_id=instance_id, interfaces=(nic,)))

    kept = backend.host.network_remove(network)
    guest.destroy()
    removed = backend.host.network_remove(network)

    assert (kept, removed, network.libvirt_name in backend.host.list_networks()) == (False, True, False)


def test_a_guest_that_powers_itself_off_is_seen_as_stopped(backend: Backend) -> None:
    if backend.kind == "test":
        pytest.skip("libvirt's test driver runs no guest that could power off")
    spec = backend.spec(init_script=INIT_POWEROFF)
    guest = backend.host.define_and_start(spec)

    if backend.kind == "fake":
        backend.host.simulate_guest_poweroff(spec.instance_id)
    state = guest.wait_until_stopped(timeout_s=30)

    assert state == GuestState.ABSENT
    if backend.boots_real_vms:
        assert SENTINEL in spec.console_log.read_text()


def test_a_running_guest_has_stats_and_a_stopped_one_has_none(backend: Backend) -> None:
    spec = backend.spec(vcpus=1, memory_mib=128)
    guest = backend.host.define_and_start(spec)
    backend.define_foreign_domain()  # stopped, not ours: never measured

    stats = guest.stats()
    every = backend.host.guest_stats()

    assert stats is not None
    assert (stats.vcpus, stats.memory_bytes) == (1, 128 * 1024 * 1024)
    assert stats.cpu_time_ns >= 0
    if backend.kind != "test":  # libvirt's test driver does not measure a process it has not got
        assert 0 < stats.rss_bytes
    assert set(every) & set(backend.foreign_uuids) == set()
    assert every[spec.instance_id].vcpus == 1
    guest.destroy()
    assert guest.stats() is None
    assert spec.instance_id not in backend.host.guest_stats()


def test_a_guest_s_cpu_time_grows_while_it_runs(backend: Backend) -> None:
    if backend.kind == "test":
        pytest.skip("libvirt's test driver runs no guest that could use a CPU")
    spec = backend.spec()
    guest = backend.host.define_and_start(spec)
    if backend.boots_real_vms:
        assert wait_for_console_text(spec.console_log, SENTINEL, timeout_s=30) is not None
    first = guest.stats().cpu_time_ns

    time.sleep(0.5)

    assert guest.stats().cpu_time_ns > first


@pytest.mark.vm
def test_a_real_guest_has_a_qemu_process_console_log_and_channels(qemu_backend: Backend) -> None:
    spec = qemu_backend.spec()
    guest = qemu_backend.host.define_and_start(spec)

    assert wait_for_console_text(spec.console_log, SENTINEL, timeout_s=30) is not None
    pid = guest.qemu_pid()
    assert pid is not None and Path(f"/proc/{pid}").exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.connect(str(spec.channels[1].path))  # libvirt/QEMU listens: the host connects
    guest.destroy()
    assert guest.state == GuestState.ABSENT
    assert not Path(f"/proc/{pid}").exists() or guest.qemu_pid() is None
