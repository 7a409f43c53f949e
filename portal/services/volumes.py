"""Local persistent volumes (Marathon's ``container.volumes[].persistent``): admission, the
resident slot an instance takes, and destruction.

An app with persistent volumes is resident. Its volumes come in *slots*: slot k holds one volume
per ``containerPath``. A new instance takes a free slot (one whose volumes no live instance holds
and none is being destroyed) and runs on that slot's host; only when the app has fewer slots than
instances is a new slot made, its volumes' quota claims (``volumes`` 1 and ``disk_mib`` its size,
``owner_kind="volume"``) taken in the instance's transaction under the tenant's quota lock. A
scale-down leaves the slot reserved (claims held); a wipe or the app's deletion marks it
``destroying``, and once no live instance holds it the host deletes the volumes and the rows and
claims go. Callers hold the app row's lock (the engine, app_create), so two instances never take
one slot."""

from __future__ import annotations

import logging

from django.db import transaction

from portal.choices import INSTANCE_ACTIVE, VolumeState
from portal.marathon import AppDefinition
from portal.models import App, ComputeHost, Instance, Volume
from portal.services.host_keys import host_command_send
from tenants.errors import DomainError, InvalidInput
from tenants.services import ResourceRequest, claim_release, quota_reserve
from vmworker.storage import pool_name

logger = logging.getLogger(__name__)
VOLUME_CLAIM_KIND = "volume"
DESTROY_VOLUME_TASK = "vmworker.destroy_volume"  # sent by name to the volume's host
# Each volume is a virtio disk (a PCI slot) beside the rootfs and config disks, the serial ports
# and the tenant NIC: libvirt's automatic slots end at the published-ports NIC's (designer.py).
MAX_PERSISTENT_VOLUMES = 8


class NoFreeVolumeSlot(DomainError):
    """Every slot of the app is held by a live instance (an old one still stopping, say): the new
    instance waits rather than making a volume the app's instance count does not call for."""

    status_code = 409


def pool_name_for(host: ComputeHost) -> str:
    """The host's storage pool (vmworker.storage makes it): one per host, several hosts on one
    libvirtd stay apart."""
    return pool_name(host.name)


def persistent_volumes(definition: AppDefinition) -> list[tuple[str, int]]:
    """(containerPath, size MiB) of each persistent volume, in definition order."""
    if definition.container is None:
        return []
    return [
        (volume.container_path, volume.persistent_size_mib)
        for volume in definition.container.volumes
        if volume.persistent_size_mib is not None
    ]


def volume_admission_check(definition: AppDefinition, current: AppDefinition | None = None) -> None:
    """What the platform refuses of a volume list, by path, before anything is stored: binds of a
    volume to an absolute path (``hostPath``), and, for an app that exists, any change of its
    persistent volumes (their data stays with the slots; wipe or delete the app to change them)."""
    volumes = definition.container.volumes if definition.container else ()
    if len(persistent_volumes(definition)) > MAX_PERSISTENT_VOLUMES:
        raise InvalidInput(
            f"An app may have at most {MAX_PERSISTENT_VOLUMES} persistent volumes.", field="/container/volumes"
        )
    for index, volume in enumerate(volumes):
        if volume.host_path is not None:
            raise InvalidInput(
                "hostPath volumes are not supported: a persistent volume is mounted at $MESOS_SANDBOX/<containerPath>.",
                field=f"/container/volumes({index})/hostPath",
            )
    if current is not None and persistent_volumes(current) != persistent_volumes(definition):
        raise InvalidInput(
            "An app's persistent volumes cannot be added, removed or resized by an update: "
            "delete the app (or wipe its tasks) to change them.",
            field="/container/volumes",
        )


def slot_request(definition: AppDefinition) -> ResourceRequest:
    """What one slot claims of the quota."""
    sizes = [size for _, size in persistent_volumes(definition)]
    return ResourceRequest(volumes=len(sizes), disk_mib=sum(sizes))


def _slots(app: App) -> dict[int, list[Volume]]:
    slots: dict[int, list[Volume]] = {}
    for volume in Volume.objects.select_for_update(of=("self",)).select_related("instance").filter(app=app):
        slots.setdefault(volume.slot, []).append(volume)
    return slots


def _is_destroying(volumes: list[Volume]) -> bool:
    return any(volume.state == VolumeState.DESTROYING for volume in volumes)


def _is_held(volumes: list[Volume]) -> bool:
    return any(volume.instance is not None and volume.instance.status in INSTANCE_ACTIVE for volume in volumes)


def live_slot_count(app: App) -> int:
    """Slots not being destroyed: what the app holds of the quota, reserved or in use."""
    slots = set(Volume.objects.filter(app=app).values_list("slot", flat=True))
    destroying = set(Volume.objects.filter(app=app, state=VolumeState.DESTROYING).values_list("slot", flat=True))
    return len(slots - destroying)


def volume_slot_take(*, app: App, instance: Instance, definition: AppDefinition) -> None:
    """Give a new instance of a resident app its slot, inside the instance's transaction: a free
    one if there is one, else a new one (claims under the quota lock). Raises QuotaExceeded or
    NoFreeVolumeSlot (the caller's transaction then writes nothing)."""
    specs = persistent_volumes(definition)
    if not specs:
        return
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("volume_slot_take must run inside transaction.atomic()")
    slots = _slots(app)
    for _slot, volumes in sorted(slots.items()):
        if not _is_destroying(volumes) and not _is_held(volumes):
            Volume.objects.filter(pk__in=[volume.pk for volume in volumes]).update(instance=instance)
            return
    if sum(not _is_destroying(volumes) for volumes in slots.values()) >= definition.instances:
        raise NoFreeVolumeSlot("waiting for its volume: the instance that held it has not stopped yet")
    slot = next(number for number in range(len(slots) + 1) if number not in slots)
    for container_path, size_mib in specs:
        volume = Volume.objects.create(
            tenant=app.tenant,
            app=app,
            app_marathon_id=app.marathon_id,
            slot=slot,
            container_path=container_path,
            size_mib=size_mib,
            instance=instance,
        )
        quota_reserve(
            tenant=app.tenant,
            owner_kind=VOLUME_CLAIM_KIND,
            owner_id=str(volume.pk),
            request=ResourceRequest(volumes=1, disk_mib=size_mib),
        )


def volume_pinned_host(instance: Instance) -> ComputeHost | None:
    """The host an instance must run on: its slot's, once the slot has one."""
    volume = Volume.objects.select_related("host").filter(instance=instance, host__isnull=False).first()
    return volume.host if volume is not None else None


def volume_slot_place(*, instance: Instance, host: ComputeHost) -> None:
    """The slot's volumes live on the host the instance was placed on (first placement)."""
    Volume.objects.filter(instance=instance, host__isnull=True).update(host=host, pool_name=pool_name_for(host))


def volume_mark_created(*, instance_id, used_bytes: dict[str, int]) -> None:
    """The host made (or found) the instance's volumes: ``used_bytes`` per volume id."""
    for volume in Volume.objects.filter(instance_id=instance_id):
        fields = {"used_bytes": used_bytes.get(str(volume.pk), volume.used_bytes)}
        if volume.state == VolumeState.RESERVED:
            fields["state"] = VolumeState.CREATED
        Volume.objects.filter(pk=volume.pk, state=volume.state).update(**fields)


def volumes_destroy(*, volumes) -> None:
    """Wipe: mark these volumes (their whole slots) destroying; each goes as soon as no live
    instance holds it. Inside the caller's transaction."""
    volumes = list(volumes)
    slots = {(volume.app_id, volume.slot) for volume in volumes if volume.app_id is not None}
    ids = {volume.pk for volume in volumes}
    for app_id, slot in slots:
        ids |= set(Volume.objects.filter(app_id=app_id, slot=slot).values_list("pk", flat=True))
    Volume.objects.filter(pk__in=ids).update(state=VolumeState.DESTROYING)
    volume_destroy_ready(Volume.objects.filter(pk__in=ids))


def volume_destroy_ready(volumes) -> None:
    """Destroying volumes that no live instance holds: those never made on a host go at once;
    the others are deleted by their host (its task calls volume_destroyed)."""
    for volume in volumes.filter(state=VolumeState.DESTROYING).select_related("instance", "host"):
        if volume.instance is not None and volume.instance.status in INSTANCE_ACTIVE:
            continue
        if volume.host is None:
            volume_destroyed(volume_id=volume.pk)
            continue
        args = [str(volume.pk), volume.pool_name, volume.volume_name]
        queue = volume.host.queue
        transaction.on_commit(
            lambda args=args, queue=queue, host=volume.host.name: host_command_send(
                host, DESTROY_VOLUME_TASK, args, queue=queue
            )
        )


def volume_destroy_after_instance(*, instance: Instance) -> None:
    """An instance ended: its volumes that wait to be destroyed can go now."""
    volume_destroy_ready(Volume.objects.filter(instance=instance))


def volume_destroyed(*, volume_id) -> None:
    """The volume is gone from its host (or was never made): its row and its claim go together."""
    with transaction.atomic():
        volume = Volume.objects.select_for_update().select_related("tenant").filter(pk=volume_id).first()
        if volume is None:
            return
        claim_release(tenant=volume.tenant, owner_kind=VOLUME_CLAIM_KIND, owner_id=str(volume.pk))
        volume.delete()
    logger.info("volume.destroyed", extra={"volume_id": str(volume_id)})
