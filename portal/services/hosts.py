"""Compute hosts: registration and heartbeats (from each host's worker), expiry and the
periodic reconcile (from beat)."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Q
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, DeploymentStatus, HostState, InstanceStatus
from portal.models import App, ComputeHost, Deployment, Instance
from portal.public_host import public_host_conflict, public_url_parse
from portal.scheduling import hosts_alive
from portal.services.host_keys import host_command_send
from portal.services.instances import instance_transition

logger = logging.getLogger(__name__)


def host_queue(name: str) -> str:
    return f"host.{name}"


class PublishAddressRefused(Exception):
    """A compute host would publish apps on the portal's own host (portal.public_host)."""


def host_register(
    *,
    name: str,
    libvirt_uri: str,
    vcpus: int,
    memory_mib: int,
    virt_type: str,
    probe_s: float | None,
    publish_ip: str = "127.0.0.1",
) -> ComputeHost:
    public = public_url_parse(settings.PUBLIC_URL)  # the web server refuses to start on a bad one
    if conflict := public_host_conflict(public, publish_ip):
        logger.error("host.publish_address_refused", extra={"host": name, "publish_ip": publish_ip})
        raise PublishAddressRefused(f"Compute host {name} is not registered. {conflict}")
    host, _ = ComputeHost.objects.update_or_create(
        name=name,
        defaults={
            "queue": host_queue(name),
            "libvirt_uri": libvirt_uri,
            "publish_ip": publish_ip,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "virt_type": virt_type,
            "probe_s": probe_s,
            "state": HostState.UP,
            "last_heartbeat_at": timezone.now(),
        },
    )
    logger.info("host.registered", extra={"host": name, "virt_type": virt_type})
    return host


def host_heartbeat(*, name: str, warm_pool: dict | None = None) -> bool:
    """False when the host's row is gone (e.g. removed by an admin): the worker registers again.
    ``warm_pool``: {"<vcpus>x<MiB>": {"ready": n, "target": m}} (vmworker.warm_pool)."""
    fields = {"last_heartbeat_at": timezone.now(), "state": HostState.UP}
    if warm_pool is not None:
        fields["warm_pool"] = {
            shape: {"ready": int(counts["ready"]), "target": int(counts["target"])}
            for shape, counts in list(warm_pool.items())[:16]
            if _SHAPE_LABEL.match(str(shape))
        }
    return bool(ComputeHost.objects.filter(name=name).update(**fields))


_SHAPE_LABEL = re.compile(r"^\d{1,3}x\d{2,6}$")


def warm_start_rates(hosts) -> dict[int, dict]:
    """Per host pk: the starts of the last hour that claimed a pooled VM (their timings have
    ``claim``) and all starts (those with ``boot_to_exec``)."""
    since = timezone.now() - timedelta(hours=1)
    rates = {}
    for host in hosts:
        started = Instance.objects.filter(host=host, created_at__gte=since, timings_s__has_key="boot_to_exec")
        total = started.count()
        warm = started.filter(timings_s__has_key="claim").count()
        rates[host.pk] = {"warm": warm, "total": total, "rate_pct": round(100 * warm / total) if total else None}
    return rates


def host_ports_block(*, name: str, ports: list[int]) -> None:
    """Ports a program outside the platform holds on this host's publish address: placement
    skips them for HOST_PORT_BLOCK_S (entries past their time are dropped here)."""
    now = time.time()
    with transaction.atomic():
        host = ComputeHost.objects.select_for_update().filter(name=name).first()
        if host is None:
            return
        blocked = {port: until for port, until in host.blocked_ports.items() if until > now}
        blocked.update({str(port): now + settings.HOST_PORT_BLOCK_S for port in ports})
        host.blocked_ports = blocked
        host.save(update_fields=["blocked_ports"])
    logger.warning("host.ports_blocked", extra={"host": name, "ports": ports})


def hosts_expire() -> list[str]:
    """Hosts whose heartbeat stopped go down; their instances are lost (and so replaced)."""
    alive_ids = set(hosts_alive().values_list("id", flat=True))
    expired = list(ComputeHost.objects.filter(state=HostState.UP).exclude(id__in=alive_ids))
    for host in expired:
        with transaction.atomic():
            if ComputeHost.objects.filter(pk=host.pk, state=HostState.UP).update(state=HostState.DOWN) == 0:
                continue
        logger.warning("host.expired", extra={"host": host.name})
        for instance_id in Instance.objects.filter(host=host, status__in=INSTANCE_ACTIVE).values_list("pk", flat=True):
            instance_transition(
                instance_id=instance_id, to=InstanceStatus.LOST, failure_reason=f"host {host.name} stopped heartbeating"
            )
    return [host.name for host in expired]


LIVE_STATUSES = INSTANCE_ACTIVE - {InstanceStatus.STOPPING}


def apps_needing_converge() -> list[int]:
    """The apps the engine has something to do for (platform-wide: for the reconciler only).

    An app at rest — its live instances all of the current version, as many as asked, none
    waiting for a host — is skipped: every instance change that matters converges its app
    already (``instance_transition``). Picked: a running deployment (moving it on), deletion,
    instances of an old version, staged instances without a host (placement again), and a live
    count off target once the launch backoff has passed (a failed or lost instance to replace).
    """
    if not App.objects.exists():
        return []  # the common idle case: one table read, not the four-table query below
    live = Q(instances__status__in=LIVE_STATUSES)
    apps = App.objects.annotate(
        target=Cast(KeyTextTransform("instances", KeyTransform("app", "current_version__definition")), IntegerField()),
        live_current=Count("instances", filter=live & Q(instances__version=F("current_version"))),
        live_old=Count("instances", filter=live & ~Q(instances__version=F("current_version"))),
        unplaced=Count("instances", filter=Q(instances__status=InstanceStatus.STAGED, instances__host__isnull=True)),
        deploying=Exists(Deployment.objects.filter(app=OuterRef("pk"), status=DeploymentStatus.RUNNING)),
    )
    backoff_over = Q(next_launch_at__isnull=True) | Q(next_launch_at__lte=timezone.now())
    return list(
        apps.filter(
            Q(deploying=True)
            | Q(deleting=True)
            | Q(live_old__gt=0)
            | Q(unplaced__gt=0)
            | (~Q(live_current=F("target")) & backoff_over)
        ).values_list("pk", flat=True)
    )


def reconcile_all() -> None:

    from portal.services.deployments import app_converge
    from portal.services.health import health_probes_claim
    from portal.services.host_sync import host_plan
    from portal.services.instance_specs import instance_boots_resend

    hosts_expire()
    for app_id in apps_needing_converge():
        app_converge(app_id=app_id)
    alive = list(hosts_alive())
    instance_boots_resend(host_names=[host.name for host in alive])
    for host in alive:
        probes = health_probes_claim(host_name=host.name)
        plan = host_plan(host)
        host_command_send(host.name, "vmworker.reconcile_host", [host.name, probes, plan], queue=host.queue, expires=30)
