"""Instance state changes: compare-and-swap on portal.choices.INSTANCE_TRANSITIONS, the
quota claim released when an instance ends, an event for every change (after commit)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from portal.choices import INSTANCE_TERMINAL, INSTANCE_TRANSITIONS, InstanceStatus, marathon_task_state
from portal.events import event_publish, marathon_timestamp
from portal.models import Instance
from tenants.services import claim_release

logger = logging.getLogger(__name__)
CLAIM_KIND = "instance"
# Only these change what the deployment engine decides (capacity, health, replacements);
# pulling/preparing/booting/stopping would only queue converges that do nothing.
ENGINE_RELEVANT = frozenset(
    {InstanceStatus.RUNNING, InstanceStatus.HEALTHY, InstanceStatus.UNHEALTHY, *INSTANCE_TERMINAL}
)


def _instance_locked(instance_id, statuses) -> Instance | None:
    """The instance, its row locked, when its status is one of ``statuses`` (compare-and-swap)."""
    return (
        Instance.objects.select_for_update(of=("self",))
        .select_related("app", "tenant", "host", "version")
        .filter(pk=instance_id, status__in=statuses)
        .first()
    )


def instance_transition(
    *, instance_id, to: str, launch_failed: bool = False, expected: tuple[str, ...] | None = None, **fields
) -> Instance | None:
    """Move the instance to ``to`` if its current status allows it (and is one of ``expected``,
    when given); None (and nothing written) when it does not: a re-delivered task or a late
    report is a no-op.
    ``launch_failed`` counts the end toward the app's launch backoff in the same transaction,
    so the replacement the engine starts after commit already waits for it."""
    allowed = INSTANCE_TRANSITIONS[to]
    if expected is not None:
        allowed = [status for status in allowed if status in expected]
    with transaction.atomic():
        if launch_failed:
            # The engine locks App then Instance; take them in the same order (no deadlock).
            from portal.models import App

            app_id = Instance.objects.filter(pk=instance_id).values_list("app_id", flat=True).first()
            list(App.objects.select_for_update().filter(pk=app_id).values_list("pk", flat=True))
        instance = _instance_locked(instance_id, allowed)
        if instance is None:
            return None
        now = timezone.now()
        instance.phase_times = {**instance.phase_times, to: now.isoformat()}
        instance.status = to
        for name, value in fields.items():
            setattr(instance, name, value)
        instance.save()
        if to in INSTANCE_TERMINAL:
            claim_release(tenant=instance.tenant, owner_kind=CLAIM_KIND, owner_id=str(instance.pk))
            from portal.services.images import image_claim_release_unused

            image_claim_release_unused(tenant=instance.tenant, manifest_digest=instance.image_digest)
            from portal.services.networks import network_address_release

            network_address_release(instance_id=instance.pk)
            from portal.services.volumes import volume_destroy_after_instance

            volume_destroy_after_instance(instance=instance)
        if launch_failed:
            from portal.services.deployments import app_record_launch_failure

            app_record_launch_failure(app_id=instance.app_id)
        _publish_status(instance, message=fields.get("failure_reason", ""))
        if to in ENGINE_RELEVANT:
            transaction.on_commit(lambda: _after_change(instance.app_id))
    logger.info("instance.transition", extra={"instance_id": str(instance_id), "status": to})
    return instance


# What a host task was doing when it met a transient failure, by the status the instance kept.
RETRIED_STEP = {
    InstanceStatus.STAGED: "boot",
    InstanceStatus.PULLING: "pull",
    InstanceStatus.PREPARING: "image preparation",
    InstanceStatus.BOOTING: "boot",
    InstanceStatus.STOPPING: "stop",
}


def instance_retry_note(*, instance_id, attempt: int, attempts: int, retry_in_s: float, error: str) -> Instance | None:
    """A host task met a transient failure (portal side of ``vmworker.failures``) and runs again
    in ``retry_in_s``: the instance keeps its status and says why, which attempt failed
    (``launch_attempt``) and when the next one starts (``not_before``), with an event so open
    pages show it. None when the instance is gone or over."""
    with transaction.atomic():
        instance = _instance_locked(instance_id, RETRIED_STEP)
        if instance is None:
            return None
        step = RETRIED_STEP[instance.status]
        instance.failure_reason = f"{step} failed: {error} (attempt {attempt} of {attempts})"[:1000]
        instance.launch_attempt = attempt
        instance.not_before = timezone.now() + timedelta(seconds=retry_in_s)
        instance.save(update_fields=["failure_reason", "launch_attempt", "not_before", "updated_at"])
        _publish_status(instance, message=instance.failure_reason)
    logger.info("instance.retry_noted", extra={"instance_id": str(instance_id), "attempt": attempt})
    return instance


def _publish_status(instance: Instance, *, message: str = "") -> None:
    event_publish(
        tenant=instance.tenant,
        app=instance.app,
        instance=instance,
        kind="status_update_event",
        data={
            "slaveId": instance.host.name if instance.host else "",
            "taskId": instance.task_id,
            "taskStatus": marathon_task_state(instance.status, instance.exit_code),
            "message": message,
            "appId": instance.app.marathon_id,
            "host": instance.host.name if instance.host else "",
            "ipAddresses": [{"ipAddress": instance.ip_address, "protocol": "IPv4"}] if instance.ip_address else [],
            "ports": instance.host_ports,
            "version": instance.version.version,
            "status": instance.status,
            "instanceId": str(instance.pk),
            "phaseTimes": instance.phase_times,
            "at": marathon_timestamp(),
        },
    )


def _after_change(app_id: int) -> None:
    from portal.tasks import converge_app

    converge_app.delay(app_id)
