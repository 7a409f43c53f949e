"""Writes of the deploy domain (what the /v2 and /api/v1 APIs and the pages call).

Every change writes a new immutable AppVersion (Marathon versions scale-only changes too) and
a Deployment, in one transaction; the engine (portal.services.deployments) does the rest after
commit. Creating an app admits all its instances at once: their quota claims are taken under
the tenant's quota lock and each is placed, so an over-quota create leaves nothing behind."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, DeploymentKind, DeploymentStatus
from portal.events import event_publish, marathon_timestamp
from portal.marathon import AppDefinition, MarathonValidationError, parse_app_definition
from portal.models import App, AppVersion, Deployment, Instance
from portal.platform_policy import platform_policy
from portal.selectors import app_definition
from portal.services.deployments import (
    WRITABLE_LAYER_MAX_MIB,
    deployment_plan_json,
    instance_create,
    instance_disk_mib,
    instance_resources,
    instance_stop,
    requested_host_ports,
)
from portal.services.instances import CLAIM_KIND
from portal.services.networks import network_ensure, network_name_for
from portal.services.volumes import (
    VOLUME_CLAIM_KIND,
    live_slot_count,
    slot_request,
    volume_admission_check,
    volumes_destroy,
)
from tenants.choices import QuotaResource, TenantRole
from tenants.embedded_registry import platform_registry_hosts
from tenants.errors import Conflict, DomainError, InvalidInput, QuotaExceeded
from tenants.models import Quota, ResourceClaim
from tenants.selectors import quota_usage
from vmworker.registry_address import AddressRefused, check_image_registry


class AppExists(Conflict):
    pass


class AppLocked(Conflict):
    def __init__(self, deployment_ids: list[str]):
        super().__init__(
            "App is locked by one or more deployments. Override with the option '?force=true'. "
            f"View details at '/v2/deployments/{deployment_ids[0]}'."
        )
        self.deployment_ids = deployment_ids


class AppNotFound(DomainError):
    status_code = 404


class DefinitionOutsidePolicy(InvalidInput):
    """A definition (often a stored one: a rollback, a scale, a restart) that the platform policy
    no longer allows; named by its first bad path, as the parser would."""

    status_code = 422

    def __init__(self, error: MarathonValidationError):
        first = error.details[0]
        super().__init__("; ".join(str(message) for message in first["errors"]), field=str(first["path"]))
        self.details = error.details


ACTIONS = {
    DeploymentKind.START: ("StartApplication", "ScaleApplication"),
    DeploymentKind.SCALE: ("ScaleApplication",),
    DeploymentKind.RESTART: ("RestartApplication",),
    DeploymentKind.STOP: ("StopApplication",),
}


def _admission_check(definition: AppDefinition) -> None:
    """What the platform cannot run yet, refused by path before anything is stored."""
    if definition.container is None or definition.container.docker is None:
        raise InvalidInput("An image is required: set container.docker.image.", field="/container/docker/image")
    volume_admission_check(definition)
    if definition.disk_mib > WRITABLE_LAYER_MAX_MIB:
        raise InvalidInput(f"At most {WRITABLE_LAYER_MAX_MIB} MiB.", field="/disk")


def _policy_check(definition: AppDefinition) -> None:
    """Every definition that is stored or deployed again meets today's platform policy, whichever
    path it came by: a stored version (rollback, restart, scale up, cancel) may predate it. Its
    image's registry too (a pull is the platform connecting where the tenant says)."""
    try:
        parse_app_definition(definition.to_marathon_json(), policy=platform_policy())
    except MarathonValidationError as error:
        raise DefinitionOutsidePolicy(error) from None
    registry_host = definition.container.docker.image_reference.registry_host
    try:
        check_image_registry(registry_host, allowed=platform_registry_hosts())
    except AddressRefused as refused:
        raise InvalidInput(
            f"The image's registry {registry_host} is not one the platform pulls from: {refused}.",
            field="/container/docker/image",
        ) from None


def _quota_check(app: App | None, tenant, definition: AppDefinition) -> None:
    """The target state must fit: other apps' usage plus n instances of this definition, and for
    a resident app its volume slots (n, or more when scaled-down slots stay reserved)."""
    vcpus, memory_mib = instance_resources(definition, 0)
    per_instance = {
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_mib": instance_disk_mib(definition),
        "instances": 1,
        "published_ports": len(requested_host_ports(definition)),
    }
    wanted = {resource: amount * definition.instances for resource, amount in per_instance.items()}
    slot = slot_request(definition)
    slots = max(definition.instances, live_slot_count(app) if app is not None else 0)
    wanted["volumes"] = slot.volumes * slots
    wanted["disk_mib"] += slot.disk_mib * slots
    quota = Quota.objects.get(tenant=tenant)
    usage = quota_usage(tenant=tenant)
    own: dict[str, int] = {}
    if app is not None:
        owned = {(CLAIM_KIND, str(pk)) for pk in Instance.objects.filter(app=app).values_list("pk", flat=True)}
        owned |= {(VOLUME_CLAIM_KIND, str(pk)) for pk in app.volumes.values_list("pk", flat=True)}
        for claim in ResourceClaim.objects.filter(tenant=tenant, owner_id__in=[owner_id for _, owner_id in owned]):
            if (claim.owner_kind, claim.owner_id) in owned:
                for resource in wanted:
                    own[resource] = own.get(resource, 0) + getattr(claim, resource)
    for resource, amount in wanted.items():
        others = usage[resource] - own.get(resource, 0)
        limit = getattr(quota, resource)
        if amount and others + amount > limit:
            raise QuotaExceeded(resource=QuotaResource(resource).value, limit=limit, used=others, requested=amount)


def _next_version(app: App | None) -> str:
    moment = timezone.now()
    latest = app.versions.order_by("-created_at").values_list("version", flat=True).first() if app else None
    version = marathon_timestamp(moment)
    while latest is not None and version <= latest:
        moment += timedelta(milliseconds=1)
        version = marathon_timestamp(moment)
    return version


def _locked_app(app: App) -> App:
    return App.objects.select_for_update(of=("self",)).select_related("tenant", "current_version").get(pk=app.pk)


def _take_lock(app: App, *, force: bool) -> Deployment | None:
    running = list(app.deployments.filter(status=DeploymentStatus.RUNNING))
    if running and not force:
        raise AppLocked([str(d.pk) for d in running])
    for deployment in running:
        deployment.status = DeploymentStatus.CANCELLED
        deployment.finished_at = timezone.now()
        deployment.save(update_fields=["status", "finished_at"])
    return running[-1] if running else None


def _deployment_create(*, app: App, kind: str, version: str, previous: AppVersion | None) -> Deployment:
    deployment = Deployment.objects.create(
        tenant=app.tenant,
        app=app,
        app_marathon_id=app.marathon_id,
        version=version,
        kind=kind,
        target_version=app.current_version,
        previous_version=previous,
        steps=[{"actions": [{"action": action, "app": app.marathon_id}]} for action in ACTIONS[kind]],
    )
    event_publish(
        tenant=app.tenant,
        app=app,
        kind="deployment_info",
        data={"plan": deployment_plan_json(deployment), "currentStep": {"actions": deployment.steps[0]["actions"]}},
    )
    app_id = app.pk
    transaction.on_commit(lambda: _converge_later(app_id))
    return deployment


def _converge_later(app_id: int) -> None:
    from portal.tasks import converge_app

    converge_app.delay(app_id)


def _version_create(app: App, definition: AppDefinition, actor) -> AppVersion:
    version = AppVersion.objects.create(
        app=app,
        version=_next_version(app),
        definition=definition.to_stored(),
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    app.current_version = version
    return version


def app_create(*, access, definition: AppDefinition, force: bool = False) -> Deployment:
    access.require(TenantRole.DEVELOPER)
    _admission_check(definition)
    _policy_check(definition)
    with transaction.atomic():
        if App.objects.for_tenant(access.tenant).filter(marathon_id=definition.id).exists():
            raise AppExists(f"An app with id [{definition.id}] already exists.")
        _quota_check(None, access.tenant, definition)
        network_ensure(tenant=access.tenant, name=network_name_for(definition))  # its quota: a 403 now, not later
        app = App.objects.create(tenant=access.tenant, marathon_id=definition.id)
        version = _version_create(app, definition, access.actor)
        app.last_config_change_at = app.last_scaling_at = version.created_at
        app.save()
        deployment = _deployment_create(app=app, kind=DeploymentKind.START, version=version.version, previous=None)
        for _ in range(definition.instances):
            instance_create(app=app, definition=definition, deployment=deployment)
        event_publish(
            tenant=app.tenant,
            app=app,
            kind="api_post_event",
            data={"clientIp": "", "uri": f"/v2/apps{app.marathon_id}", "appDefinition": definition.to_marathon_json()},
        )
    return deployment


def _only_instances_differ(current: AppDefinition, new: AppDefinition) -> bool:
    return dataclasses.replace(current, instances=new.instances) == new


def app_update(
    *, access, app: App, definition: AppDefinition, force: bool = False, kind: str | None = None
) -> Deployment:
    access.require(TenantRole.DEVELOPER)
    _admission_check(definition)
    with transaction.atomic():
        app = _locked_app(app)
        if app.deleting:
            raise AppNotFound(f"App '{app.marathon_id}' does not exist")
        current = app_definition(app)
        definition = dataclasses.replace(definition, id=app.marathon_id)
        volume_admission_check(definition, current)
        # Scaling down or stopping an app stored under an older policy stays possible: it starts nothing.
        if not (_only_instances_differ(current, definition) and definition.instances <= current.instances):
            _policy_check(definition)
        _quota_check(app, app.tenant, definition)
        network_ensure(tenant=app.tenant, name=network_name_for(definition))
        _take_lock(app, force=force)
        previous = app.current_version
        scale_only = kind is None and _only_instances_differ(current, definition)
        version = _version_create(app, definition, access.actor)
        if scale_only:
            app.last_scaling_at = version.created_at
        else:
            app.last_config_change_at = app.last_scaling_at = version.created_at
        app.launch_failures, app.next_launch_at = 0, None
        app.save()
        chosen = kind or (DeploymentKind.SCALE if scale_only else DeploymentKind.RESTART)
        if chosen == DeploymentKind.SCALE:
            # The running instances stay: they move to the new version without a restart.
            Instance.objects.filter(app=app, version=previous, status__in=INSTANCE_ACTIVE).update(version=version)
        return _deployment_create(app=app, kind=chosen, version=version.version, previous=previous)


def app_scale(*, access, app: App, instances: int, force: bool = False) -> Deployment:
    if instances < 0:
        raise InvalidInput("instances must be >= 0", field="/instances")
    return app_update(
        access=access, app=app, definition=dataclasses.replace(app_definition(app), instances=instances), force=force
    )


def app_restart(*, access, app: App, force: bool = False) -> Deployment:
    return app_update(access=access, app=app, definition=app_definition(app), force=force, kind=DeploymentKind.RESTART)


def app_rollback(*, access, app: App, version: str, force: bool = False) -> Deployment:
    stored = app.versions.filter(version=version).first()
    if stored is None:
        raise AppNotFound(f"App '{app.marathon_id}' does not exist in version {version}")
    return app_update(
        access=access, app=app, definition=app_definition(app, stored), force=force, kind=DeploymentKind.RESTART
    )


def app_delete(*, access, app: App, force: bool = False) -> Deployment:
    access.require(TenantRole.DEVELOPER)
    with transaction.atomic():
        app = _locked_app(app)
        if app.deleting:
            raise AppNotFound(f"App '{app.marathon_id}' does not exist")
        _take_lock(app, force=force)
        app.deleting = True
        app.save(update_fields=["deleting"])
        return _deployment_create(
            app=app, kind=DeploymentKind.STOP, version=_next_version(app), previous=app.current_version
        )


def instance_kill(
    *, access, instances: list[Instance], scale: bool = False, force: bool = False, wipe: bool = False
) -> Deployment | None:
    """Stop these instances: replaced by the engine, or (scale=True) the app's count lowered.
    wipe=True also destroys their volumes: the replacement starts on a fresh slot."""
    access.require(TenantRole.DEVELOPER)
    if scale and wipe:
        raise InvalidInput("scale and wipe cannot be combined.", field="wipe")
    deployment = None
    with transaction.atomic():
        by_app: dict[int, list[Instance]] = {}
        for instance in instances:
            by_app.setdefault(instance.app_id, []).append(instance)
        for app_instances in by_app.values():
            app = app_instances[0].app
            if scale:
                target = max(0, app_definition(app).instances - len(app_instances))
                deployment = app_update(
                    access=access,
                    app=app,
                    definition=dataclasses.replace(app_definition(app), instances=target),
                    force=force,
                    kind=DeploymentKind.SCALE,
                )
            for instance in app_instances:
                instance.refresh_from_db()
                if wipe:
                    volumes_destroy(volumes=instance.volumes.all())
                instance_stop(instance, reason="wiped through the API" if wipe else "killed through the API")
            if not scale:
                app_id = app.pk
                transaction.on_commit(lambda app_id=app_id: _converge_later(app_id))
    return deployment


def deployment_cancel(*, access, deployment: Deployment, force: bool = False) -> Deployment | None:
    """force: just stop driving it. Otherwise roll back to the version before it."""
    access.require(TenantRole.DEVELOPER)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if deployment.status != DeploymentStatus.RUNNING:
            raise AppNotFound(f"DeploymentPlan {deployment.pk} does not exist")
        app = deployment.app
        if force or app is None:
            deployment.status = DeploymentStatus.CANCELLED
            deployment.finished_at = timezone.now()
            deployment.save(update_fields=["status", "finished_at"])
            return None
        if deployment.previous_version is None:  # a create rolls back to nothing
            return app_delete(access=access, app=app, force=True)
        if app.deleting:
            App.objects.filter(pk=app.pk).update(deleting=False)
            app.refresh_from_db()
        return app_update(
            access=access,
            app=app,
            definition=app_definition(app, deployment.previous_version),
            force=True,
            kind=DeploymentKind.RESTART,
        )
