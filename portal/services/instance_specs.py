"""The instance spec a compute host boots from: built here, from the portal's rows, and sent
with the host's boot task (vmworker.spec_message reads it on the host).

A host gets everything it needs in the message and reads no database: the image, the registry
credentials of that image's registry for this one pull (never the tenant's other registries, nor
the platform's secrets), env, ports, network, volumes, the stop grace and the health checks.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, InstanceStatus, VolumeState
from portal.marathon import AppDefinition
from portal.marathon.app_definition import NetworkMode
from portal.models import Instance
from portal.selectors import image_pull_allowance
from portal.services.deployments import instance_disk_mib
from portal.services.health import health_probe_message
from portal.services.host_keys import host_command_send, host_key
from portal.services.instances import instance_transition
from portal.services.networks import network_attachment_of
from portal.services.volumes import persistent_volumes
from tenants.selectors import registry_for_image
from vmworker.guestinit.config import MESOS_SANDBOX
from vmworker.network.tenant import instance_mac
from vmworker.report_signing import seal
from vmworker.spec_message import SPEC_VERSION

logger = logging.getLogger(__name__)
BOOT_TASK = "vmworker.boot_instance"
RESEND_BOOT_S = 60


class SpecUnbuildable(Exception):
    """The instance cannot be booted as stored (e.g. its volume is not on its host)."""


def kill_grace_s(definition: AppDefinition) -> int | None:
    """The app's taskKillGracePeriodSeconds (None: the runtime's default), never above today's
    platform cap: a version stored before the cap (a day-long grace) is relaunched and stopped
    with the cap."""
    grace_s = definition.task_kill_grace_period_s
    if grace_s is None:
        return None
    return min(grace_s, settings.APP_DEFINITION_LIMITS["max_task_kill_grace_period_s"])


def guest_ports(definition: AppDefinition, host_ports: list[int]) -> tuple[list[dict], dict[str, str]]:
    """Host forwards ({host_port, guest_port}) and the $PORTi environment, Marathon style: host
    networking gives the app its host ports to bind ($PORT0...); bridge mappings forward to the
    container port."""
    env: dict[str, str] = {}
    if definition.network_mode is NetworkMode.HOST:
        guest = list(host_ports)
    else:
        mappings = [
            m for m in (definition.container.port_mappings if definition.container else ()) if m.host_port is not None
        ]
        guest = [mapping.container_port or host_port for mapping, host_port in zip(mappings, host_ports, strict=True)]
    for index, port in enumerate(guest):
        env[f"PORT{index}"] = str(port)
    if guest:
        env["PORT"] = str(guest[0])
        env["PORTS"] = ",".join(str(port) for port in guest)
    forwards = [
        {"host_port": int(host_port), "guest_port": int(guest_port)}
        for host_port, guest_port in zip(host_ports, guest, strict=True)
    ]
    return forwards, env


def pull_credentials(instance: Instance, image: str) -> tuple[dict | None, bool]:
    """The credentials of the image's registry only (the tenant's registry for the image's host,
    else the platform's embedded one), and whether TLS is verified."""
    registry = registry_for_image(tenant=instance.tenant, image=image)
    if registry is None:
        return None, True
    credentials = {"username": registry.username, "password": registry.pull_password()} if registry.username else None
    return credentials, not registry.insecure


def credentials_for_host(host_name: str, credentials: dict | None) -> dict | None:
    """Sealed with the host's own key (vmworker.report_signing): only the host that makes the pull
    opens them, not another one reading the broker, nor a log of the message."""
    if credentials is None or not settings.HOST_REPORTS_SIGNED:
        return credentials
    return {"sealed": seal(host_key(host_name), credentials)}


def network_attachment(instance: Instance) -> dict | None:
    """The instance's NIC on its tenant network, from the address the portal allocated at placement."""
    found = network_attachment_of(instance)
    if found is None:
        return None
    network, allocation = found
    prefix = network.subnet.rsplit("/", 1)[1]
    return {
        "network_id": str(network.pk),
        "mac": instance_mac(str(instance.pk), "tenant"),
        "ip_cidr": f"{allocation.address}/{prefix}",
    }


def volume_attachments(instance: Instance, definition: AppDefinition) -> list[dict]:
    """The volumes of the instance's slot, in the definition's order; only the instance's own
    tenant's and only ones placed on its host (a volume's data is never attached anywhere else)."""
    from portal.models import Volume

    by_path = {
        volume.container_path: volume
        for volume in Volume.objects.filter(instance=instance, tenant=instance.tenant, host=instance.host).exclude(
            state=VolumeState.DESTROYING
        )
    }
    attachments = []
    for container_path, _ in persistent_volumes(definition):
        volume = by_path.get(container_path)
        if volume is None:
            raise SpecUnbuildable(f"the instance holds no volume for {container_path} on its host")
        attachments.append(
            {
                "volume_id": str(volume.pk),
                "pool_name": volume.pool_name,
                "volume_name": volume.volume_name,
                "size_mib": volume.size_mib,
                "container_path": volume.container_path,
            }
        )
    return attachments


def instance_spec_build(instance: Instance) -> dict:
    """The complete, JSON-safe boot spec of ``instance`` (see vmworker.spec_message)."""
    definition = AppDefinition.from_stored(instance.version.definition)
    image = definition.container.docker.image
    credentials, tls_verify = pull_credentials(instance, image)
    forwards, port_env = guest_ports(definition, instance.host_ports)
    allowance = image_pull_allowance(tenant=instance.tenant)
    enforce_cpu = settings.INSTANCE_ENFORCE_CPU_QUOTA and definition.cpus < instance.vcpus
    volumes = volume_attachments(instance, definition)
    return {
        "version": SPEC_VERSION,
        "instance_id": str(instance.pk),
        "name": f"{instance.app.marathon_id.strip('/').replace('/', '-')}-{str(instance.pk)[:8]}",
        "image": image,
        "registry_host": definition.container.docker.image_reference.registry_host,
        "credentials": credentials_for_host(instance.host.name, credentials),
        "tls_verify": tls_verify,
        "shell_command": definition.cmd,
        "command": list(definition.args) if definition.args else None,
        "env": {
            **port_env,
            "MARATHON_APP_ID": instance.app.marathon_id,
            "MARATHON_APP_VERSION": instance.version.version,
            "MESOS_TASK_ID": instance.task_id,
            "MESOS_SANDBOX": MESOS_SANDBOX,
            **dict(definition.env),
        },
        "user": definition.user,
        "vcpus": instance.vcpus,
        "memory_mib": instance.memory_mib,
        # Marathon's cpus are shares, not a cap (as in Mesos by default): a hard CFS quota of 0.1
        # CPU would make a TCG boot ten times slower. INSTANCE_ENFORCE_CPU_QUOTA caps it.
        "cpu_quota_pct": max(1, round(definition.cpus * 100 / instance.vcpus)) if enforce_cpu else None,
        "ports": forwards,
        "metadata": {"tenant": instance.tenant.slug, "app": instance.app.marathon_id},
        "stop_grace_s": kill_grace_s(definition),
        "network": network_attachment(instance),
        "ip_address": instance.ip_address,
        "overlay_size_mib": instance_disk_mib(definition),
        "disk_quota_left_bytes": allowance.disk_left_bytes,
        "disk_quota_held_digests": sorted(allowance.held_digests),
        "volumes": volumes,
        # The app's instances on this host that have ended: a VM of one of them that still holds
        # one of these volumes goes (the portal hands a volume on only once its holder ended);
        # a VM of any other instance is never touched (the boot waits, VolumeBusy).
        "volume_holders_ended": volume_holders_ended(instance) if volumes else [],
        "health_checks": [health_probe_message(check) for check in definition.health_checks],
        "sent_at": time.time(),  # a host refuses a boot message older than its instance records
    }


HOLDERS_ENDED_MAX = 50  # the last holder of a volume is among the app's latest ended instances


def volume_holders_ended(instance: Instance) -> list[str]:
    ended = (
        Instance.objects.filter(app_id=instance.app_id, host_id=instance.host_id)
        .exclude(status__in=INSTANCE_ACTIVE)
        .exclude(pk=instance.pk)
        .order_by("-updated_at")
        .values_list("pk", flat=True)[:HOLDERS_ENDED_MAX]
    )
    return [str(pk) for pk in ended]


def instance_boot_send(*, instance_id) -> bool:
    """Builds the instance's spec and sends its host the boot task with it (after the caller's
    commit: call it from ``transaction.on_commit``). An instance that cannot be built fails."""
    instance = (
        Instance.objects.select_related("app", "version", "tenant", "host")
        .filter(pk=instance_id, status=InstanceStatus.STAGED, host__isnull=False)
        .first()
    )
    if instance is None:
        return False  # moved on (stopped, or booting already)
    try:
        spec = instance_spec_build(instance)
    except SpecUnbuildable as exc:
        instance_transition(
            instance_id=instance_id, to=InstanceStatus.FAILED, launch_failed=True, failure_reason=str(exc)[:1000]
        )
        return False
    # The message's args carry one pull's password: what monitoring shows of them does not.
    argsrepr = repr([str(instance.pk), "<instance spec>"])
    host_command_send(
        instance.host.name, BOOT_TASK, [str(instance.pk), spec], queue=instance.host.queue, argsrepr=argsrepr
    )
    return True


def instance_boots_resend(*, host_names: list[str]) -> list[str]:
    """Instances placed on these (live) hosts whose boot message never ran (lost with the broker,
    or expired): their boot is built and sent again, at most once per RESEND_BOOT_S (the staged
    time restarts by compare-and-swap, so two rounds never both send). The ids sent again."""
    now = timezone.now()
    resent = []
    waiting = Instance.objects.filter(status=InstanceStatus.STAGED, host__name__in=host_names)
    for instance in waiting.only("pk", "phase_times"):
        entered = instance.phase_times.get(InstanceStatus.STAGED)
        if not entered or (now - datetime.fromisoformat(entered)).total_seconds() <= RESEND_BOOT_S:
            continue
        restarted = {**instance.phase_times, InstanceStatus.STAGED: now.isoformat()}
        if not Instance.objects.filter(
            pk=instance.pk, status=InstanceStatus.STAGED, phase_times=instance.phase_times
        ).update(phase_times=restarted):
            continue
        if instance_boot_send(instance_id=instance.pk):
            resent.append(str(instance.pk))
    return resent
