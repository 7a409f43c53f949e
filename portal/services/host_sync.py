"""The portal side of a compute host's level-triggered messages (issue 12): the host reads and
writes no database, so what it needs goes to it in messages and what it sees comes back in them.

- ``host_plan``: what one host's reconcile acts on, built from the rows now and sent with the
  ``vmworker.reconcile_host`` task: its up and stopping instances (with each stop's grace), those
  booting for more than BOOTING_HEAL_AFTER_S (the host reports again those whose app runs: a
  "running" report lost with the broker or the database is made up), every live instance id
  (whose folders stay), the networks in use, its volumes.
- ``host_report_apply``: the host's report, sent at start and every heartbeat: its capacity and
  virt type (registration), its warm pool, when its worker started, the instance VMs it runs and
  the volume files in its pool. From it the portal decides, never the host: stuck boots fail,
  VMs of instances that ended (or never were) and volume files no row names are removed by
  commands sent back. The host listed them before the rows are read here, and a row is made
  before its VM or file, so nothing being made is ever taken for a leftover.
- ``volume_report_apply``: one volume's blocks in use, or its destruction.

Reports are checked before use: a host speaks only of its own instances and volumes, and every
value is bounded (a host is the least trusted part of the platform).
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, INSTANCE_UP, InstanceStatus, VolumeState
from portal.marathon import AppDefinition
from portal.models import ComputeHost, Instance, Volume
from portal.services.host_keys import host_command_send
from portal.services.hosts import PublishAddressRefused, host_heartbeat, host_queue, host_register
from portal.services.instance_specs import kill_grace_s
from portal.services.instances import instance_transition
from portal.services.networks import network_ids_in_use
from portal.services.volumes import pool_name_for, volume_destroyed
from vmworker.storage import VOLUME_NAME_PREFIX

logger = logging.getLogger(__name__)
REMOVE_INSTANCES_TASK = "vmworker.remove_instances"
DELETE_VOLUMES_TASK = "vmworker.delete_volumes"
BOOTING_STEPS = (InstanceStatus.PULLING, InstanceStatus.PREPARING, InstanceStatus.BOOTING)
# A boot whose current phase began this long ago and whose app runs on the host lost its "running"
# report. The host skips a boot still under way (runtime.boot's marker); its own report follows
# the marker's removal by a volume measurement and a send, the one window left where a heal's
# report (without timings) can come first.
BOOTING_HEAL_AFTER_S = 30
REPORT_LIST_MAX = 10_000  # ids a host report may carry (far above what a host runs)
VIRT_TYPES = ("kvm", "qemu")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


def host_name_valid(name: str) -> bool:
    return bool(_SAFE_NAME.match(name))


class HostReportRefused(ValueError):
    pass


# ---- plan: portal -> host ---------------------------------------------------------------------


def host_plan(host: ComputeHost) -> dict:
    """What ``host``'s reconcile acts on now (see the module's docstring)."""
    up, booting, stopping, active = [], [], {}, []
    graces: dict[int, int | None] = {}
    for instance in Instance.objects.select_related("version").filter(host=host, status__in=INSTANCE_ACTIVE):
        instance_id = str(instance.pk)
        active.append(instance_id)
        if instance.status in INSTANCE_UP:
            up.append(instance_id)
        elif instance.status in BOOTING_STEPS and _phase_age_s(instance) > BOOTING_HEAL_AFTER_S:
            booting.append(instance_id)
        elif instance.status == InstanceStatus.STOPPING:
            if instance.version_id not in graces:
                graces[instance.version_id] = kill_grace_s(AppDefinition.from_stored(instance.version.definition))
            stopping[instance_id] = graces[instance.version_id]
    volumes = [
        {
            "volume_id": str(volume.pk),
            "pool_name": volume.pool_name,
            "volume_name": volume.volume_name,
            "used_bytes": volume.used_bytes,
            "destroying": volume.state == VolumeState.DESTROYING,
            "holder_active": volume.instance is not None and volume.instance.status in INSTANCE_ACTIVE,
        }
        for volume in Volume.objects.select_related("instance").filter(host=host)
    ]
    return {
        "up": up,
        "booting": booting,
        "stopping": stopping,
        "active": active,
        "networks": sorted(network_ids_in_use()),
        "volumes": volumes,
    }


# ---- host report: host -> portal --------------------------------------------------------------


def _bounded_int(report: dict, key: str, low: int, high: int) -> int:
    value = report.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HostReportRefused(f"{key}: not an integer in [{low}, {high}]")
    return value


def _bounded_float(report: dict, key: str, low: float, high: float, *, optional: bool = False) -> float | None:
    value = report.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HostReportRefused(f"{key}: not a number")
    if not low <= value <= high:
        raise HostReportRefused(f"{key}: not in [{low}, {high}]")
    return float(value)


def _uuid_list(report: dict, key: str) -> set[str]:
    values = report.get(key) or []
    if not isinstance(values, list) or len(values) > REPORT_LIST_MAX:
        raise HostReportRefused(f"{key}: not a list of at most {REPORT_LIST_MAX}")
    return {str(uuid.UUID(str(value))) for value in values}


def host_report_apply(*, report: dict) -> None:
    """Applies one host report (see the module's docstring); a malformed one is logged and dropped."""
    try:
        name = str(report["name"])
        if not _SAFE_NAME.match(name):
            raise HostReportRefused("name: not a host name")
        virt_type = str(report["virt_type"])
        if virt_type not in VIRT_TYPES:
            raise HostReportRefused(f"virt_type: not one of {VIRT_TYPES}")
        registration = {
            "libvirt_uri": str(report["libvirt_uri"])[:255],
            "vcpus": _bounded_int(report, "vcpus", 1, 4096),
            "memory_mib": _bounded_int(report, "memory_mib", 1, 1 << 30),
            "virt_type": virt_type,
            "probe_s": _bounded_float(report, "probe_s", 0, 3600, optional=True),
            "publish_ip": str(report.get("publish_ip", "127.0.0.1"))[:45],
        }
        worker_started_at = _bounded_float(report, "worker_started_at", 0, 1e11)
        boot_timeout_s = _bounded_float(report, "boot_timeout_s", 1, 86400)
        vm_ids = _uuid_list(report, "instance_ids")
        volume_names = report.get("volume_names") or []
        if not isinstance(volume_names, list) or len(volume_names) > REPORT_LIST_MAX:
            raise HostReportRefused("volume_names: not a list")
        warm_pool = report.get("warm_pool", {})
        if not isinstance(warm_pool, dict):
            raise HostReportRefused("warm_pool: not an object")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("host_report.refused", extra={"reason": str(exc)})
        return
    try:
        # At the worker's start (``register``), and whenever the row is gone (an admin removed it).
        if report.get("register") or not host_heartbeat(name=name, warm_pool=warm_pool):
            host_register(name=name, **registration)
            host_heartbeat(name=name, warm_pool=warm_pool)
    except PublishAddressRefused:
        return  # logged by host_register: the host stays unregistered
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("host_report.refused", extra={"host": name, "reason": str(exc)})
        return
    host = ComputeHost.objects.get(name=name)
    _fail_stuck_boots(host, worker_started_at=worker_started_at, boot_timeout_s=boot_timeout_s)
    _remove_ended_vms(host, vm_ids)
    _delete_unknown_volumes(host, volume_names)


def _phase_age_s(instance: Instance) -> float:
    entered = instance.phase_times.get(instance.status)
    return (timezone.now() - datetime.fromisoformat(entered)).total_seconds() if entered else 0.0


def _fail_stuck_boots(host: ComputeHost, *, worker_started_at: float, boot_timeout_s: float) -> list[str]:
    """Boots on ``host`` that cannot finish: one whose phase began before the host's worker
    started (the task died with the previous worker; with acks_late on Redis it would come back
    only after the visibility timeout, an hour) and one past three boot timeouts. They fail (and
    are replaced by the engine); their VM, if any, is removed as an ended instance's."""
    now = timezone.now()
    limit_s = boot_timeout_s * 3
    failed = []
    for instance in Instance.objects.filter(host=host, status__in=BOOTING_STEPS).only("pk", "status", "phase_times"):
        entered = instance.phase_times.get(instance.status)
        entered_at = datetime.fromisoformat(entered) if entered else now
        if entered_at.timestamp() < worker_started_at:
            reason, launch_failed = "the host's worker restarted during the boot", False
        elif (now - entered_at).total_seconds() > limit_s:
            reason, launch_failed = f"the boot did not finish within {limit_s:.0f} s", True
        else:
            continue
        moved = instance_transition(
            instance_id=instance.pk,
            to=InstanceStatus.FAILED,
            expected=(instance.status,),
            launch_failed=launch_failed,
            failure_reason=reason,
        )
        if moved is not None:
            failed.append(str(instance.pk))
    if failed:
        instances_remove_send(host, failed)
    return failed


def _remove_ended_vms(host: ComputeHost, vm_ids: set[str]) -> list[str]:
    """VMs the host runs whose instance has ended or never was (e.g. its app was deleted while a
    stop failed, or a boot finished after its instance was stopped): the database is the truth."""
    if not vm_ids:
        return []
    active = {
        str(pk)
        for pk in Instance.objects.filter(pk__in=vm_ids, status__in=INSTANCE_ACTIVE).values_list("pk", flat=True)
    }
    ended = sorted(vm_ids - active)
    if ended:
        logger.warning("host.ended_vms_remove", extra={"host": host.name, "instance_ids": ended})
        instances_remove_send(host, ended)
    return ended


def _delete_unknown_volumes(host: ComputeHost, volume_names: list) -> list[str]:
    """Volume files in the host's pool that no row names (a row goes only after its file, and is
    made before it: e.g. a tenant deleted by an operator): their data goes."""
    found: dict[uuid.UUID, str] = {}
    for volume_name in volume_names:
        try:
            if isinstance(volume_name, str) and volume_name.startswith(VOLUME_NAME_PREFIX):
                found[uuid.UUID(volume_name.removeprefix(VOLUME_NAME_PREFIX))] = volume_name
        except ValueError:
            continue  # not a name the platform gives: not ours to delete
    if not found:
        return []
    known = set(Volume.objects.filter(pk__in=list(found)).values_list("pk", flat=True))
    unknown = sorted(name for volume_id, name in found.items() if volume_id not in known)
    if unknown:
        logger.warning("host.volume_unknown_delete", extra={"host": host.name, "volumes": unknown})
        host_command_send(
            host.name, DELETE_VOLUMES_TASK, [host.name, pool_name_for(host), unknown], queue=host_queue(host.name)
        )
    return unknown


def instances_remove_send(host: ComputeHost, instance_ids: list[str]) -> None:
    """Tells ``host`` to remove the VMs and files of these ended instances (a no-op for any it
    does not have)."""
    host_command_send(
        host.name,
        REMOVE_INSTANCES_TASK,
        [host.name, list(instance_ids)],
        queue=host_queue(host.name),
        expires=settings.HOST_HEARTBEAT_EXPIRY_S,  # the next report asks again
    )


# ---- volume report: host -> portal ------------------------------------------------------------


def volume_report_apply(*, host_name: str, volume_id: str, used_bytes=None, destroyed: bool = False) -> None:
    """One of ``host_name``'s volumes: its blocks in use now, or gone from the host."""
    try:
        volume_uuid = uuid.UUID(str(volume_id))
        if used_bytes is not None and (isinstance(used_bytes, bool) or not isinstance(used_bytes, int)):
            raise HostReportRefused("used_bytes: not an integer")
    except (ValueError, HostReportRefused) as exc:
        logger.warning("volume_report.refused", extra={"host": str(host_name)[:128], "reason": str(exc)})
        return
    volume = Volume.objects.select_related("host").filter(pk=volume_uuid).first()
    if volume is None or volume.host is None or volume.host.name != host_name:
        return  # gone already, or not this host's
    if destroyed:
        volume_destroyed(volume_id=volume.pk)
    elif used_bytes is not None and 0 <= used_bytes <= volume.size_mib * 1024 * 1024 * 2:
        Volume.objects.filter(pk=volume.pk).exclude(used_bytes=used_bytes).update(used_bytes=used_bytes)
