"""The host worker's side of persistent volumes on real PostgreSQL, libvirt played by the fake
driver: a boot's volumes are made in the host's pool and attached writable by serial; the
destroy task deletes the file through the pool API and only then reports it (the portal drops
the row and the claim). The host reads no database: the messages between it and the portal run
in-process here (tests.support.message_loop)."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from portal.choices import InstanceStatus, VolumeState
from portal.marathon import parse_app_definition
from portal.models import Volume
from portal.platform_policy import platform_policy
from portal.services import apps as app_services
from portal.services.host_keys import host_command_send, host_key
from portal.services.host_sync import host_plan, host_report_apply
from portal.services.instance_specs import SpecUnbuildable, instance_spec_build, volume_holders_ended
from portal.services.instances import instance_transition
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.selectors import quota_usage
from tests.support.message_loop import message_loop  # noqa: F401 (fixture)
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import MembershipFactory
from vmworker import tasks
from vmworker.driver.fake import FakeHost
from vmworker.driver.guest import GuestState
from vmworker.driver.spec import DiskSpec, DomainSpec
from vmworker.runtime import HyperVMRuntime, RuntimeSettings, VolumeBusy
from vmworker.spec_message import spec_from_message
from vmworker.storage.pool import is_formatted

APP = {
    "id": "/db",
    "cmd": "sleep 3600",
    "cpus": 0.1,
    "mem": 128,
    "container": {
        "docker": {"image": "demo/h:1"},
        "volumes": [
            {"containerPath": "data", "mode": "RW", "persistent": {"size": 16}},
            {"containerPath": "logs", "mode": "RW", "persistent": {"size": 8}},
        ],
    },
}


@pytest.fixture
def host_runtime(tmp_path: Path, monkeypatch, message_loop) -> HyperVMRuntime:  # noqa: F811
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    monkeypatch.setattr(tasks, "runtime", lambda: runtime)
    monkeypatch.setattr(tasks, "host_name", lambda: "host-v")
    registration = {"libvirt_uri": "test:///", "vcpus": 8, "memory_mib": 16384, "virt_type": "qemu", "probe_s": 0.1}
    monkeypatch.setattr(tasks, "_registration", registration)
    return runtime


def volumes_round() -> None:
    """The volumes part of the host's reconcile, on the portal's plan of host-v."""
    from portal.models import ComputeHost

    tasks._volumes_round(host_plan(ComputeHost.objects.get(name="host-v"))["volumes"])


def instance_spec(instance):
    """The spec the portal sends, as the host reads it."""
    return spec_from_message(
        instance_spec_build(instance), publish_host_ip="127.0.0.1", host_name="host-v", host_key=host_key("host-v")
    )


def deploy(tenant):
    compute_host_create("host-v")
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    app = app_services.app_create(access=access, definition=parse_app_definition(APP, policy=platform_policy())).app
    return access, app, app.instances.get()


@pytest.mark.django_db
def test_the_boot_spec_carries_the_slots_volumes_in_definition_order_and_the_sandbox(tenant, host_runtime) -> None:
    _, _, instance = deploy(tenant)

    spec = instance_spec(instance)

    assert [(v.container_path, v.size_mib, v.pool_name) for v in spec.volumes] == [
        ("data", 16, "hvm-vol-host-v"),
        ("logs", 8, "hvm-vol-host-v"),
    ]
    assert spec.env["MESOS_SANDBOX"] == "/mnt/mesos/sandbox"


@pytest.mark.django_db
def test_volumes_are_made_formatted_and_attached_writable_by_serial(tenant, host_runtime) -> None:
    _, _, instance = deploy(tenant)
    spec = instance_spec(instance)

    disks = host_runtime.volumes_prepare(spec.volumes, instance_id=spec.instance_id)

    assert [(d.serial, d.readonly) for d in disks] == [("hvm-vol0", False), ("hvm-vol1", False)]
    assert all(is_formatted(d.path) for d in disks)
    assert sorted(host_runtime.host.list_volumes("hvm-vol-host-v")) == sorted(v.volume_name for v in spec.volumes)


@pytest.mark.django_db
def test_a_volume_of_another_tenant_is_never_attached(tenant, other_tenant, host_runtime) -> None:
    _, _, instance = deploy(tenant)
    Volume.objects.filter(instance=instance, container_path="logs").update(tenant=other_tenant)

    with pytest.raises(SpecUnbuildable):
        instance_spec(instance)


@pytest.mark.django_db
def test_a_volume_of_another_host_is_never_attached(tenant, host_runtime) -> None:
    _, _, instance = deploy(tenant)
    other = compute_host_create("host-x")
    Volume.objects.filter(instance=instance).update(host=other)

    with pytest.raises(SpecUnbuildable):
        instance_spec(instance)


def made_and_wiped(tenant, host_runtime):
    """A deployed instance whose volumes its host made, then wiped and stopped: the disks."""
    access, _, instance = deploy(tenant)
    disks = host_runtime.volumes_prepare(instance_spec(instance).volumes, instance_id=str(instance.pk))
    app_services.instance_kill(access=access, instances=[instance], wipe=True)
    instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPED)
    return disks


@pytest.mark.django_db
def test_destroy_deletes_the_file_through_the_pool_then_the_row_and_the_claim(tenant, host_runtime) -> None:
    disks = made_and_wiped(tenant, host_runtime)
    assert set(Volume.objects.values_list("state", flat=True)) == {VolumeState.DESTROYING}

    unsigned = Volume.objects.first()
    tasks.destroy_volume(str(unsigned.pk), unsigned.pool_name, unsigned.volume_name)  # not the portal's word
    assert all(disk.path.exists() for disk in disks)

    for volume in Volume.objects.all():  # as the portal sends it: signed with host-v's key
        host_command_send(
            "host-v",
            "vmworker.destroy_volume",
            [str(volume.pk), volume.pool_name, volume.volume_name],
            queue="host.host-v",
        )

    assert not any(disk.path.exists() for disk in disks)
    assert host_runtime.host.list_volumes("hvm-vol-host-v") == []
    assert Volume.objects.count() == 0
    assert quota_usage(tenant=tenant)["volumes"] == 0


@pytest.mark.django_db
def test_the_reconcile_destroys_volumes_whose_destroy_task_was_lost(tenant, host_runtime) -> None:
    disks = made_and_wiped(tenant, host_runtime)

    volumes_round()

    assert not any(disk.path.exists() for disk in disks)
    assert Volume.objects.count() == 0


@pytest.mark.django_db
def test_the_reconcile_records_the_blocks_each_volume_holds(tenant, host_runtime) -> None:
    _, _, instance = deploy(tenant)
    disks = host_runtime.volumes_prepare(instance_spec(instance).volumes, instance_id=str(instance.pk))
    with open(disks[0].path, "r+b") as device:
        device.seek(8 * 1024 * 1024)
        device.write(b"x" * 1024 * 1024)

    volumes_round()

    used = dict(Volume.objects.values_list("container_path", "used_bytes"))
    assert used["data"] >= 1024 * 1024 > used["logs"] > 0


def start_vm_holding(runtime: HyperVMRuntime, instance_id: str, volume: Path) -> None:
    """A VM of the host with the volume attached (the fake driver's: no guest runs)."""
    runtime.host.define_and_start(
        DomainSpec(
            instance_id=instance_id,
            kernel=volume,
            initrd=volume,
            cmdline="",
            vcpus=1,
            memory_mib=128,
            console_log=volume.parent / "console.log",
            virt_type="qemu",
            disks=(DiskSpec(path=volume, serial="hvm-vol0", readonly=False),),
        )
    )


@pytest.mark.django_db
def test_a_volume_still_attached_to_another_vm_of_the_host_is_not_attached_again(tenant, host_runtime) -> None:
    """An instance marked lost while its host was cut off may still run there when the host comes
    back; its replacement on that host waits until that VM is destroyed."""
    _, _, instance = deploy(tenant)
    spec = instance_spec(instance)
    (data, _) = host_runtime.volumes_prepare(spec.volumes, instance_id=spec.instance_id)
    lost = str(uuid.uuid4())
    start_vm_holding(host_runtime, lost, data.path)

    with pytest.raises(VolumeBusy, match=f"still attached to VM hvm-{lost}"):
        host_runtime.volumes_prepare(spec.volumes, instance_id=str(uuid.uuid4()))
    assert host_runtime.volumes_prepare(spec.volumes, instance_id=lost)  # its own VM: no conflict
    host_runtime.host.get_guest(lost).destroy()
    assert len(host_runtime.volumes_prepare(spec.volumes, instance_id=str(uuid.uuid4()))) == 2


@pytest.mark.django_db
def test_the_vm_of_an_ended_instance_that_holds_the_volume_is_destroyed_before_the_boot(tenant, host_runtime) -> None:
    """The lost instance's VM still runs when its host comes back: the replacement's spec names
    the app's ended instances on the host (the portal hands a volume on only when its holder has
    ended), so the boot destroys that VM instead of failing; the VM of any instance the spec does
    not name ended is never touched (VolumeBusy)."""
    _, _, instance = deploy(tenant)
    spec = instance_spec(instance)
    (data, _) = host_runtime.volumes_prepare(spec.volumes, instance_id=spec.instance_id)
    holder = str(instance.pk)
    start_vm_holding(host_runtime, holder, data.path)
    replacement = SimpleNamespace(pk=uuid.uuid4(), app_id=instance.app_id, host_id=instance.host_id)

    def holder_ended(instance_id: str) -> bool:  # what boot_instance passes, from the spec message
        return instance_id in volume_holders_ended(replacement)

    with pytest.raises(VolumeBusy):  # the holder is live in the database: its VM stays
        host_runtime.volumes_prepare(spec.volumes, instance_id=str(replacement.pk), holder_ended=holder_ended)
    assert host_runtime.host.get_guest(holder).state == GuestState.RUNNING

    instance_transition(instance_id=instance.pk, to=InstanceStatus.LOST, failure_reason="host cut off")
    disks = host_runtime.volumes_prepare(spec.volumes, instance_id=str(replacement.pk), holder_ended=holder_ended)

    assert len(disks) == 2
    assert holder not in {guest.instance_id for guest in host_runtime.host.list_guests()}


@pytest.mark.django_db
def test_a_volume_found_without_its_file_system_is_made_afresh_not_formatted_in_place(tenant, host_runtime) -> None:
    """A volume with no ext4 superblock at the next boot (its guest overwrote it, or an earlier
    boot died before mkfs) is deleted and made again as a fresh file: the guest's bytes never go
    through mkfs's signature probes on the host, and none of them survive."""
    _, _, instance = deploy(tenant)
    spec = instance_spec(instance)
    (data, _) = host_runtime.volumes_prepare(spec.volumes, instance_id=spec.instance_id)
    marker = b"guest bytes " * 100
    with open(data.path, "r+b") as disk:
        disk.write(bytes(4096))  # no superblock any more
        for mib in range(1, 16):  # and the guest's bytes all over it
            disk.seek(mib * 1024 * 1024 + 512 * 1024)
            disk.write(marker)

    (again, _) = host_runtime.volumes_prepare(spec.volumes, instance_id=spec.instance_id)

    assert again.path == data.path and is_formatted(again.path)
    assert marker not in again.path.read_bytes()


@pytest.mark.django_db
def test_volume_files_no_row_names_are_deleted_on_the_portals_word_after_a_host_report(
    tenant,
    host_runtime,
    message_loop,  # noqa: F811
) -> None:
    """A row goes only after its file (destroy_volume), so a volume file in the host's pool with
    no row is left over (its tenant deleted by an operator, say): the host lists its pool in its
    report, the portal finds no row and sends the delete. The rows' own files, and files of names
    the platform never gives, stay."""
    _, _, instance = deploy(tenant)
    disks = host_runtime.volumes_prepare(instance_spec(instance).volumes, instance_id=str(instance.pk))
    leftover = disks[0].path.parent / f"hvvol-{uuid.uuid4()}"
    leftover.write_bytes(b"a deleted tenant's data")
    foreign = disks[0].path.parent / "not-a-volume.img"
    foreign.write_bytes(b"")

    host_report_apply(report=tasks.host_report("host-v"))  # the heartbeat: the portal sends the delete

    assert message_loop.names() == ["vmworker.delete_volumes"]
    assert not leftover.exists()
    assert foreign.exists() and all(disk.path.exists() for disk in disks)
