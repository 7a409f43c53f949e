"""What compute hosts report, applied to the database: the portal side of the host's messages.

Contract: an instance report is level-triggered. It says what the host observes of one of its
instances now (``state``: pulling, preparing, booting, running, failed, lost, stopped) with what
goes with it (the error, exit code, console tail, timings, volume usage, host ports an outside
program holds, a retry note, a health probe's result), never "move from A to B". It is applied by the compare-and-swap
transitions (portal.services.instances), so a duplicate, late or out-of-order report changes
nothing, and a "running" report after a lost "booting" one still lands (a running VM has booted).
A host reports only its own instances: a report naming an instance placed elsewhere is dropped.
Host-supplied text is cut to the columns' bounds; it is shown to the tenant as the host said it.
"""

from __future__ import annotations

import logging
import re
import uuid

from portal.choices import INSTANCE_TERMINAL, InstanceStatus
from portal.marathon import AppDefinition
from portal.models import Instance
from portal.services.deployments import app_converge, app_record_launch_success
from portal.services.health import instance_health_judge
from portal.services.host_sync import instances_remove_send
from portal.services.hosts import host_ports_block
from portal.services.images import instance_image_claim
from portal.services.instances import ENGINE_RELEVANT, instance_retry_note, instance_transition
from portal.services.volumes import volume_mark_created
from tenants.errors import QuotaExceeded

logger = logging.getLogger(__name__)
REPORTED_STATES = {
    "pulling": InstanceStatus.PULLING,
    "preparing": InstanceStatus.PREPARING,
    "booting": InstanceStatus.BOOTING,
    "running": InstanceStatus.RUNNING,
    "failed": InstanceStatus.FAILED,
    "lost": InstanceStatus.LOST,
    "stopped": InstanceStatus.STOPPED,
}
FAILURE_REASON_MAX = 1000
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CONSOLE_TAIL_MAX = 4000


class ReportRefused(ValueError):
    pass


def _optional_int(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportRefused(f"not an integer: {value!r}")
    return value


def _ended_fields(report: dict) -> dict:
    fields: dict = {}
    if "error" in report:
        fields["failure_reason"] = str(report["error"])[:FAILURE_REASON_MAX]
    if "console_tail" in report:
        fields["console_tail"] = str(report["console_tail"])[-CONSOLE_TAIL_MAX:]
    if "exit_code" in report:
        fields["exit_code"] = _optional_int(report["exit_code"])
    if "oom" in report:
        fields["oom_killed"] = bool(report["oom"])
    return fields


def instance_report_apply(*, report: dict) -> None:
    """Applies one instance report of host ``report["host"]`` (see the module's contract)."""
    try:
        instance_id = uuid.UUID(str(report["instance_id"]))
        host_name = str(report["host"])
        state = report.get("state")
        if state is not None and state not in REPORTED_STATES:
            raise ReportRefused(f"unknown state {state!r}")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("host_report.refused", extra={"reason": str(exc)})
        return
    instance = Instance.objects.select_related("host").filter(pk=instance_id).first()
    if instance is None or instance.host is None or instance.host.name != host_name:
        logger.warning("host_report.not_its_instance", extra={"host": host_name, "instance_id": str(instance_id)})
        return
    try:
        _apply(instance, host_name, state, report)
    except (ReportRefused, ValueError, TypeError, AttributeError) as exc:
        logger.warning("host_report.refused", extra={"instance_id": str(instance_id), "reason": str(exc)})
        return
    if (state is not None and REPORTED_STATES[state] in ENGINE_RELEVANT) or report.get("health"):
        # The engine moves on now, in this task, not after the reports queued behind it on the
        # portal's queue (the transition's own converge comes later and finds nothing to do).
        app_converge(app_id=instance.app_id)


def _apply(instance: Instance, host_name: str, state: str | None, report: dict) -> None:
    image = report.get("image")
    if image:  # prepared, before its VM is made: the unpacked size goes on the tenant's disk quota
        _image_claim(instance, image)
    blocked = report.get("host_ports_blocked")
    if blocked:
        host_ports_block(name=host_name, ports=[int(port) for port in blocked])
    used_bytes = report.get("volume_used_bytes")
    if used_bytes:  # the host made (or found) the instance's volumes
        volume_mark_created(instance_id=instance.pk, used_bytes={str(k): int(v) for k, v in dict(used_bytes).items()})
    if state is not None:
        _apply_state(instance, REPORTED_STATES[state], report)
    health = report.get("health")
    if health:  # a probe's result: the portal judges it
        instance_health_judge(instance=instance, alive=health["alive"] is True, cause=str(health.get("cause", "")))
    retry = report.get("retry")
    if retry:  # after the state: the step it retries is the one just reported
        instance_retry_note(
            instance_id=instance.pk,
            attempt=int(retry["attempt"]),
            attempts=int(retry["attempts"]),
            retry_in_s=float(retry["retry_in_s"]),
            error=str(retry["error"])[:FAILURE_REASON_MAX],
        )


def _image_claim(instance: Instance, image: dict) -> None:
    """The host prepared the instance's image: its unpacked size is claimed on the tenant's disk
    quota (the host capped the unpack at what the spec said was left; a concurrent pull may have
    taken it since). Over quota, the instance fails and its VM goes."""
    digest = str(image["digest"])
    if not _DIGEST.match(digest):
        raise ReportRefused("image digest: not a sha256 digest")
    unpacked_bytes = _optional_int(image["unpacked_bytes"])
    if unpacked_bytes is None or not 0 <= unpacked_bytes <= 1 << 50:
        raise ReportRefused("image unpacked_bytes: out of range")
    try:
        instance_image_claim(instance_id=instance.pk, manifest_digest=digest, unpacked_bytes=unpacked_bytes)
    except QuotaExceeded as exc:
        left_mib = max(0, exc.limit - exc.used)
        image_reference = AppDefinition.from_stored(instance.version.definition).container.docker.image
        reason = f"image {image_reference} unpacks to more than {left_mib} MiB (tenant disk quota)"
        if instance_transition(
            instance_id=instance.pk, to=InstanceStatus.FAILED, launch_failed=True, failure_reason=reason
        ):
            instances_remove_send(instance.host, [str(instance.pk)])


def _apply_state(instance: Instance, to: str, report: dict) -> None:
    if to == InstanceStatus.RUNNING:
        instance_transition(instance_id=instance.pk, to=InstanceStatus.BOOTING)  # its booting report was late
        timings_s = {str(k): float(v) for k, v in dict(report.get("timings_s") or {}).items()}
        running = instance_transition(
            instance_id=instance.pk,
            to=InstanceStatus.RUNNING,
            timings_s=timings_s,
            # The tenant-network address from placement; without one, the user-net NIC's.
            ip_address=instance.ip_address or ("10.0.2.15" if report.get("user_net") else ""),
            failure_reason="",  # a retry's or a placement wait's note is over
            not_before=None,
        )
        if running is not None:
            app_record_launch_success(app_id=instance.app_id)
        elif Instance.objects.filter(pk=instance.pk, status__in=INSTANCE_TERMINAL).exists():
            # It ended (stopped or failed) while it booted: its quota is gone, so goes the VM. One
            # stopping is left to its stop (the app gets its kill grace).
            instances_remove_send(instance.host, [str(instance.pk)])
    elif to in (InstanceStatus.FAILED, InstanceStatus.LOST, InstanceStatus.STOPPED):
        instance_transition(
            instance_id=instance.pk, to=to, launch_failed=bool(report.get("launch_failed")), **_ended_fields(report)
        )
    else:
        instance_transition(instance_id=instance.pk, to=to)
