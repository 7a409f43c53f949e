"""Health checks, the portal's side: which probes are due, and what a probe's result means.

Contract: every reconcile round the portal claims the probes due on a host (an up instance whose
check's interval has passed since its last round: compare-and-swap on its health record, so two
rounds never both probe it) and sends them with that host's reconcile task. The host only runs
each probe (vmworker.health_probes) and reports alive/cause back (portal.services.host_reports);
the judgement is here: Marathon's grace period (failures before the first success, within
gracePeriodSeconds of running, do not count), consecutive failures, healthy/unhealthy, and the
kill after maxConsecutiveFailures.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from portal.choices import INSTANCE_UP, InstanceStatus
from portal.marathon import AppDefinition
from portal.models import Instance
from portal.services.instances import instance_transition

CAUSE_MAX = 1000


def health_probe_message(check) -> dict:
    """One check as a host runs it (the judgement's fields stay here)."""
    return {
        "protocol": check.probe.value,
        "path": check.path,
        "port": check.port,
        "port_index": check.port_index,
        "command": check.command,
        "timeout_s": check.timeout_s,
    }


def health_probes_claim(*, host_name: str) -> list[dict]:
    """The probes due on ``host_name`` now, each claimed (its round's time stored as lastCheckAt)."""
    now = timezone.now()
    due = []
    instances = Instance.objects.select_related("version").filter(host__name=host_name, status__in=INSTANCE_UP)
    for instance in instances:
        definition = AppDefinition.from_stored(instance.version.definition)
        if not definition.health_checks:
            continue
        check = definition.health_checks[0]
        last = instance.health.get("lastCheckAt")
        if last and (now - datetime.fromisoformat(last)).total_seconds() < check.interval_s:
            continue
        claimed = {**instance.health, "lastCheckAt": now.isoformat()}
        if not Instance.objects.filter(pk=instance.pk, health=instance.health).update(health=claimed):
            continue  # another round claimed it
        due.append(
            {
                "instance_id": str(instance.pk),
                "host_ports": [int(port) for port in instance.host_ports],
                "check": health_probe_message(check),
            }
        )
    return due


def instance_health_judge(*, instance: Instance, alive: bool, cause: str) -> None:
    """A probe's result of the round claimed last (its lastCheckAt is the result's time)."""
    instance.refresh_from_db()
    if instance.status not in INSTANCE_UP:
        return  # ended (or stopping) since the probe was sent
    definition = AppDefinition.from_stored(instance.version.definition)
    if not definition.health_checks:
        return
    check = definition.health_checks[0]
    health = dict(instance.health)
    now = timezone.now()
    stamp = health.get("lastCheckAt") or now.isoformat()
    health["alive"] = alive
    if alive:
        health.setdefault("firstSuccess", stamp)
        health["lastSuccess"] = stamp
        health["consecutiveFailures"] = 0
    else:
        health["lastFailure"] = stamp
        health["lastFailureCause"] = cause[:CAUSE_MAX]
        running_since = datetime.fromisoformat(instance.phase_times.get(InstanceStatus.RUNNING, stamp))
        in_grace = "firstSuccess" not in health and (now - running_since).total_seconds() < check.grace_period_s
        if not in_grace:
            health["consecutiveFailures"] = health.get("consecutiveFailures", 0) + 1
    Instance.objects.filter(pk=instance.pk).update(health=health)
    if alive:
        instance_transition(instance_id=instance.pk, to=InstanceStatus.HEALTHY, health=health)
    elif health.get("consecutiveFailures", 0):
        instance_transition(instance_id=instance.pk, to=InstanceStatus.UNHEALTHY, health=health)
        limit = check.max_consecutive_failures
        if limit and health["consecutiveFailures"] >= limit:
            from portal.services.deployments import instance_stop

            instance.refresh_from_db()
            instance_stop(instance, reason=f"unhealthy: {cause[:CAUSE_MAX]}")
