"""The deployment engine: drives an app's live instances toward its current version.

``app_converge`` is idempotent and cheap; it runs under the app row's lock after every
instance change, after every API change and from the reconciler. It follows Marathon's
TaskReplaceActor: with n target instances, ``minHealthy = ceil(n * minimumHealthCapacity)``
healthy instances (old and new together) stay up at every moment and old + new (stopping ones
included, until they have ended) never exceed ``maxCapacity = floor(n * (1 +
maximumOverCapacity))``; old instances go as new ones become healthy. A scale only changes the
count (killSelection picks the victims). Failed launches are retried with Marathon's backoff
(backoffSeconds * backoffFactor^k, capped)."""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, DeploymentStatus, InstanceStatus, VolumeState
from portal.events import event_publish, marathon_timestamp
from portal.marathon import AppDefinition
from portal.models import App, Deployment, Instance
from portal.scheduling import NoValidHost, PlacementRequest, instance_place
from portal.services.host_keys import host_command_send
from portal.services.instances import CLAIM_KIND, instance_transition
from portal.services.networks import (
    network_address_allocate,
    network_ensure,
    network_name_for,
    network_remove_unused,
)
from portal.services.volumes import (
    NoFreeVolumeSlot,
    persistent_volumes,
    volume_pinned_host,
    volume_slot_place,
    volume_slot_take,
    volumes_destroy,
)
from tenants.errors import DomainError, QuotaExceeded
from tenants.services import ResourceRequest, quota_reserve

logger = logging.getLogger(__name__)
STOP_TASK = "vmworker.stop_instance"  # sent by name: the portal imports nothing of the host side


def instance_resources(definition: AppDefinition, min_memory_mib: int) -> tuple[int, int]:
    """vCPUs (whole, at least 1) and memory MiB (at least what the guest kernel needs)."""
    from django.conf import settings

    return max(1, math.ceil(definition.cpus)), max(
        int(math.ceil(definition.memory_mib)), min_memory_mib or settings.GUEST_MIN_MEMORY_MIB
    )


WRITABLE_LAYER_MAX_MIB = 1024 * 1024  # the largest overlay the guest init accepts (vmworker/guestinit/config.py)


def instance_disk_mib(definition: AppDefinition) -> int:
    """The writable layer of each instance: the app's ``disk`` (MiB), else the platform default.
    Claimed of the tenant's disk quota, and the size the guest's overlay is made with, so the
    claim is the bound the instance cannot write past."""
    from django.conf import settings

    return math.ceil(definition.disk_mib) if definition.disk_mib > 0 else settings.INSTANCE_DEFAULT_DISK_MIB


def requested_host_ports(definition: AppDefinition) -> tuple[int, ...]:
    """One host port per published port: container port mappings with a hostPort (0 =
    allocate) in bridge mode, every port definition in host mode (the app binds $PORTi)."""
    from portal.marathon.app_definition import NetworkMode

    if definition.network_mode is NetworkMode.HOST:
        return tuple(
            definition.port_definitions[i].port if definition.require_ports else 0
            for i in range(len(definition.port_definitions))
        )
    mappings = definition.container.port_mappings if definition.container else ()
    return tuple(mapping.host_port or 0 for mapping in mappings if mapping.host_port is not None)


def _is_healthy(instance: Instance, has_checks: dict[int, bool]) -> bool:
    if instance.status == InstanceStatus.HEALTHY:
        return True
    return instance.status == InstanceStatus.RUNNING and not has_checks[instance.version_id]


def _version_has_checks(instances: list[Instance]) -> dict[int, bool]:
    versions = {i.version_id: i.version for i in instances}  # parse each version once
    return {pk: bool(AppDefinition.from_stored(v.definition).health_checks) for pk, v in versions.items()}


def instance_stop(instance: Instance, *, reason: str = "") -> None:
    """Ask the instance's host to stop it; an unplaced one is simply stopped."""
    if instance.host_id is None:
        instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPING)
        instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPED, failure_reason=reason)
        return
    if instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPING) is not None:
        from portal.services.instance_specs import kill_grace_s

        queue = instance.host.queue
        grace_s = kill_grace_s(AppDefinition.from_stored(instance.version.definition))
        transaction.on_commit(
            lambda: host_command_send(instance.host.name, STOP_TASK, [str(instance.pk), grace_s], queue=queue)
        )


def _place_and_boot(instance: Instance, definition: AppDefinition) -> bool:
    """Place the instance and give it its tenant-network address, in one transaction: when
    either fails (no host, the network full, no network quota) nothing is claimed and the
    instance waits, staged, with the reason.

    Locks are taken in the one order every writer uses: the tenant's quota row (by
    ``network_ensure`` when it makes the network), the network row (the address), then the
    host rows (``instance_place``). Hosts first would deadlock against ``app_create``, which
    holds the quota row when it places."""
    try:
        with transaction.atomic():
            network = network_ensure(tenant=instance.tenant, name=network_name_for(definition))
            allocation = network_address_allocate(instance=instance, network=network)
            pinned = volume_pinned_host(instance)
            placement = instance_place(
                PlacementRequest(
                    app_id=instance.app_id,
                    vcpus=instance.vcpus,
                    memory_mib=instance.memory_mib,
                    host_ports=requested_host_ports(definition),
                    constraints=definition.constraints,
                    pinned_host_id=pinned.pk if pinned is not None else None,
                )
            )
            volume_slot_place(instance=instance, host=placement.host)
            instance.host = placement.host
            instance.host_ports = list(placement.host_ports)
            instance.ip_address = allocation.address
            instance.save(update_fields=["host", "host_ports", "ip_address", "updated_at"])
    except (NoValidHost, DomainError) as exc:
        if instance.failure_reason != exc.message:
            Instance.objects.filter(pk=instance.pk).update(failure_reason=exc.message)
        return False
    from portal.services.instance_specs import instance_boot_send

    transaction.on_commit(lambda: instance_boot_send(instance_id=instance.pk))
    return True


def instance_create(*, app: App, definition: AppDefinition, deployment: Deployment | None) -> Instance:
    """A new staged instance with its quota claim (and, for a resident app, its volume slot),
    placed and its boot queued when a host fits. Raises QuotaExceeded or NoFreeVolumeSlot
    (nothing written)."""
    vcpus, memory_mib = instance_resources(definition, 0)
    with transaction.atomic():
        instance = Instance.objects.create(
            tenant=app.tenant,
            app=app,
            version=app.current_version,
            deployment=deployment,
            vcpus=vcpus,
            memory_mib=memory_mib,
            phase_times={InstanceStatus.STAGED: timezone.now().isoformat()},
        )
        quota_reserve(
            tenant=app.tenant,
            owner_kind=CLAIM_KIND,
            owner_id=str(instance.pk),
            request=ResourceRequest(
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_mib=instance_disk_mib(definition),
                instances=1,
                published_ports=len(requested_host_ports(definition)),
            ),
        )
        volume_slot_take(app=app, instance=instance, definition=definition)
    _place_and_boot(instance, definition)
    return instance


def _kill_order(instances: list[Instance], kill_selection: str, has_checks) -> list[Instance]:
    """Not-yet-healthy first (killing them costs no capacity), then by killSelection."""
    youngest_first = kill_selection != "OLDEST_FIRST"
    return sorted(
        instances,
        key=lambda i: (
            _is_healthy(i, has_checks),
            -i.created_at.timestamp() if youngest_first else i.created_at.timestamp(),
        ),
    )


def app_converge(*, app_id: int) -> None:
    with transaction.atomic():
        app = (
            App.objects.select_for_update(of=("self",))
            .select_related("tenant", "current_version")
            .filter(pk=app_id)
            .first()
        )
        if app is None:
            return
        deployment = app.deployments.filter(status=DeploymentStatus.RUNNING).order_by("-created_at").first()
        active = list(
            Instance.objects.select_related("version", "host", "tenant", "app")
            .filter(app=app, status__in=INSTANCE_ACTIVE)
            .order_by("created_at")
        )
        if app.deleting:
            _converge_deleting(app, deployment, active)
            return
        definition = AppDefinition.from_stored(app.current_version.definition)
        live = [i for i in active if i.status != InstanceStatus.STOPPING]
        has_checks = _version_has_checks(live)
        new = [i for i in live if i.version_id == app.current_version_id]
        old = [i for i in live if i.version_id != app.current_version_id]
        n = definition.instances
        strategy = definition.upgrade_strategy
        min_healthy = math.ceil(n * strategy.minimum_health_capacity)
        max_capacity = max(n, math.floor(n * (1 + strategy.maximum_over_capacity)))

        # Too many of the current version: scale down.
        asked_to_stop = []  # stopping now, though `active` (read before) still says otherwise
        if len(new) > n:
            for victim in _kill_order(new, definition.kill_selection, has_checks)[: len(new) - n]:
                instance_stop(victim, reason="scaled down")
                new.remove(victim)
                asked_to_stop.append(victim)

        # Old instances go while enough healthy ones remain (unhealthy old ones cost nothing).
        killable = max(0, sum(_is_healthy(i, has_checks) for i in new + old) - min_healthy)
        for victim in _kill_order(old, definition.kill_selection, has_checks):
            if _is_healthy(victim, has_checks):
                if killable == 0:
                    continue
                killable -= 1
            instance_stop(victim, reason="replaced by a new version")
            old.remove(victim)
            asked_to_stop.append(victim)

        # Unplaced staged instances: try placing them again.
        for waiting in [i for i in new if i.host_id is None and i.status == InstanceStatus.STAGED]:
            _place_and_boot(waiting, definition)

        # Start new instances while capacity allows (and the launch backoff has passed).
        # An instance that is stopping still holds its VM (and, for a resident app, its volume)
        # until its host reports it ended: it counts against maxCapacity as Marathon counts an
        # old task until it is terminal.
        stopping = sum(i.status == InstanceStatus.STOPPING for i in active) + len(asked_to_stop)
        room = max_capacity - (len(old) + len(new) + stopping)
        missing = n - len(new)
        if (
            missing > 0
            and room <= 0
            and not stopping
            and min_healthy >= max_capacity
            and all(_is_healthy(i, has_checks) for i in new)
        ):
            if persistent_volumes(definition):
                # Resident: an extra instance would have no volume; one old instance goes instead.
                for victim in _kill_order(old, definition.kill_selection, has_checks)[:1]:
                    instance_stop(victim, reason="replaced by a new version")
                    old.remove(victim)
                    asked_to_stop.append(victim)
                    stopping += 1
            else:
                room = 1  # Marathon's special case: one extra so a full {1, 0} strategy can progress
        progress_note = ""
        if missing > 0 and room <= 0 and stopping and persistent_volumes(definition):
            progress_note = "waiting for its volume: the old instance stops before the new one mounts it"
        if missing > 0 and app.next_launch_at and timezone.now() < app.next_launch_at:
            progress_note = f"launch backoff until {marathon_timestamp(app.next_launch_at)}"
        else:
            for _ in range(max(0, min(room, missing))):
                try:
                    new.append(instance_create(app=app, definition=definition, deployment=deployment))
                except QuotaExceeded as exc:
                    progress_note = f"waiting for quota: {exc.message}"
                    break
                except NoFreeVolumeSlot as exc:
                    progress_note = exc.message
                    break

        if deployment is not None:
            # Done when the old instances have really stopped, not just been asked to.
            has_checks |= _version_has_checks([i for i in new if i.version_id not in has_checks])
            new_healthy = sum(_is_healthy(i, has_checks) for i in new)
            done = not old and not stopping and len(new) == n and new_healthy == n
            progress = {
                "target": n,
                "new": len(new),
                "old": len(old),
                "new_healthy": new_healthy,
                "stopping": stopping,
                "note": progress_note,
            }
            if done:
                deployment.progress = progress
                _deployment_finish(deployment, DeploymentStatus.SUCCEEDED)
            elif progress != deployment.progress:  # the reconciler calls this every few seconds
                deployment.progress = progress
                deployment.save(update_fields=["progress"])


def _converge_deleting(app: App, deployment: Deployment | None, active: list[Instance]) -> None:
    volumes_destroy(volumes=app.volumes.exclude(state=VolumeState.DESTROYING))
    for instance in active:
        if instance.status != InstanceStatus.STOPPING:
            instance_stop(instance, reason="app deleted")
    if Instance.objects.filter(app=app, status__in=INSTANCE_ACTIVE).exists():
        return
    if deployment is not None:
        _deployment_finish(deployment, DeploymentStatus.SUCCEEDED)
    event_publish(tenant=app.tenant, kind="app_terminated_event", data={"appId": app.marathon_id})
    app.delete()
    network_remove_unused(tenant=app.tenant)


def _deployment_finish(deployment: Deployment, status: str, reason: str = "") -> None:
    deployment.status = status
    deployment.finished_at = timezone.now()
    deployment.current_step = len(deployment.steps) or 1
    deployment.failure_reason = reason
    deployment.save()
    network_remove_unused(tenant=deployment.tenant)  # e.g. the network the old version joined
    kind = "deployment_success" if status == DeploymentStatus.SUCCEEDED else "deployment_failed"
    event_publish(
        tenant=deployment.tenant,
        app=deployment.app,
        kind=kind,
        data={"id": str(deployment.pk), "plan": deployment_plan_json(deployment)},
    )


def deployment_plan_json(deployment: Deployment) -> dict:
    empty_group = {"id": "/", "apps": [], "groups": [], "dependencies": [], "version": deployment.version}
    return {
        "id": str(deployment.pk),
        "version": deployment.version,
        "steps": deployment.steps,
        "original": empty_group,
        "target": empty_group,
    }


def app_record_launch_failure(*, app_id: int) -> None:
    with transaction.atomic():
        app = App.objects.select_for_update(of=("self",)).select_related("current_version").filter(pk=app_id).first()
        if app is None or app.current_version is None:
            return
        definition = AppDefinition.from_stored(app.current_version.definition)
        app.launch_failures += 1
        delay_s = min(
            definition.backoff_s * definition.backoff_factor ** (app.launch_failures - 1), definition.max_launch_delay_s
        )
        app.next_launch_at = timezone.now() + timedelta(seconds=delay_s)
        app.save(update_fields=["launch_failures", "next_launch_at"])


def app_record_launch_success(*, app_id: int) -> None:
    App.objects.filter(pk=app_id, launch_failures__gt=0).update(launch_failures=0, next_launch_at=None)
