"""Reads of the deploy domain; every query is narrowed to a tenant first."""

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, INSTANCE_UP, DeploymentStatus, InstanceStatus
from portal.marathon import AppDefinition
from portal.models import App, AppVersion, Deployment, Event, Instance, Volume

# How long a hole in the Event ids may be a transaction still on its way to commit (see event_horizon).
EVENT_GAP_GRACE_S = 5.0
EVENT_REPLAY_LIMIT = 500


def app_list(
    *, tenant, id_contains: str | None = None, cmd_contains: str | None = None, label: str | None = None
) -> QuerySet[App]:
    apps = App.objects.for_tenant(tenant).filter(deleting=False).select_related("current_version")
    if id_contains:
        apps = apps.filter(marathon_id__icontains=id_contains)
    if cmd_contains:
        apps = apps.filter(current_version__definition__app__cmd__icontains=cmd_contains)
    if label:
        key, sep, value = label.partition("==")
        if not sep:
            key, sep, value = label.partition("=")
        key = key.strip()
        lookup = (
            {f"current_version__definition__app__labels__{key}": value.strip()}
            if sep
            else {"current_version__definition__app__labels__has_key": key}
        )
        apps = apps.filter(**lookup)
    return apps


def app_get(*, tenant, marathon_id: str) -> App | None:
    return app_list(tenant=tenant).filter(marathon_id=marathon_id).first()


def app_definition(app: App, version: AppVersion | None = None) -> AppDefinition:
    return AppDefinition.from_stored((version or app.current_version).definition)


def app_versions(app: App) -> QuerySet[AppVersion]:
    return app.versions.order_by("-created_at", "-id")


def instance_list(*, tenant, app: App | None = None, active_only: bool = True) -> QuerySet[Instance]:
    # volumes: a resident task's localVolumes in /v2, one query for all of them
    instances = Instance.objects.for_tenant(tenant).select_related("app", "host", "version").prefetch_related("volumes")
    if app is not None:
        instances = instances.filter(app=app)
    if active_only:
        instances = instances.filter(status__in=INSTANCE_ACTIVE)
    return instances.order_by("created_at")


def volume_list(*, tenant, app: App) -> QuerySet[Volume]:
    """The app's persistent volumes, by slot, with the instance holding each and its host."""
    return (
        Volume.objects.for_tenant(tenant)
        .filter(app=app)
        .select_related("host", "instance")
        .order_by("slot", "container_path")
    )


def instance_by_task_id(*, tenant, task_id: str) -> Instance | None:
    _, sep, tail = task_id.rpartition(".instance-")
    try:
        instance_id = uuid.UUID(tail) if sep else None
    except ValueError:
        return None
    return instance_list(tenant=tenant, active_only=False).filter(pk=instance_id).first() if instance_id else None


def deployment_list_running(*, tenant) -> QuerySet[Deployment]:
    return Deployment.objects.for_tenant(tenant).filter(status=DeploymentStatus.RUNNING).order_by("created_at")


# Which active statuses each count of an app takes in (app_counts, app_list_rows).
COUNTED_STATUSES = {
    "staged": (InstanceStatus.STAGED, InstanceStatus.PULLING, InstanceStatus.PREPARING, InstanceStatus.BOOTING),
    "running": tuple(INSTANCE_UP),
    "healthy": (InstanceStatus.HEALTHY,),
    "unhealthy": (InstanceStatus.UNHEALTHY,),
}
HEALTH_COUNTS = ("healthy", "unhealthy")


def _status_counts(prefix: str = "") -> dict[str, Count]:
    """One COUNT per entry of COUNTED_STATUSES over the instances at ``prefix`` (an aggregate
    of Instance rows, or an annotation of App rows with ``instances__``)."""
    return {
        f"count_{name}": Count(f"{prefix}pk", filter=Q(**{f"{prefix}status__in": statuses}))
        for name, statuses in COUNTED_STATUSES.items()
    }


def _counts(totals: dict, *, has_checks: bool) -> dict:
    # Without health checks nothing is healthy or unhealthy, whatever a status says.
    return {
        name: totals[f"count_{name}"] if has_checks or name not in HEALTH_COUNTS else 0 for name in COUNTED_STATUSES
    }


def app_counts(app: App, definition: AppDefinition | None = None) -> dict:
    """Instances by status group, one query."""
    if definition is None and app.current_version_id:
        definition = app_definition(app)
    totals = Instance.objects.filter(app=app).aggregate(**_status_counts())
    return _counts(totals, has_checks=bool(definition and definition.health_checks))


def app_counts_many(apps: list[App], definitions: dict[int, AppDefinition]) -> dict[int, dict]:
    """``app_counts`` of every app in ``apps`` (by pk) in one query; ``definitions``: each app's
    current definition by app pk."""
    rows = (
        Instance.objects.filter(app__in=[app.pk for app in apps])
        .order_by()
        .values("app_id")
        .annotate(**_status_counts())
    )
    totals = {row["app_id"]: row for row in rows}
    none = {f"count_{name}": 0 for name in COUNTED_STATUSES}
    return {
        app.pk: _counts(totals.get(app.pk, none), has_checks=bool(definitions[app.pk].health_checks)) for app in apps
    }


@dataclass(frozen=True)
class AppRow:
    app: App
    definition: AppDefinition
    counts: dict
    deploying: bool


def app_list_rows(*, tenant) -> list[AppRow]:
    """The app list page: every app with its counts and whether a deployment runs, in one query
    whatever the number of apps (the fragment is re-fetched on every event of the tenant)."""
    running = Deployment.objects.filter(app=OuterRef("pk"), status=DeploymentStatus.RUNNING)
    apps = app_list(tenant=tenant).annotate(**_status_counts("instances__"), deploying=Exists(running))
    rows = []
    for app in apps.order_by("marathon_id"):
        definition = app_definition(app)
        totals = {key: getattr(app, key) for key in _status_counts()}
        counts = _counts(totals, has_checks=bool(definition.health_checks))
        rows.append(AppRow(app=app, definition=definition, counts=counts, deploying=app.deploying))
    return rows


def _event_horizon_scan(grace_s: float) -> tuple[int | None, int]:
    """(the horizon as event_horizon gives it, the highest id a reader may pass by that scan)."""
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    young = list(Event.objects.filter(created_at__gte=cutoff).order_by("id").values_list("id", flat=True))
    # Every hole below a row older than the grace counts as a rollback; rows committed after this
    # scan are young, so they cannot raise this bound.
    settled = Event.objects.filter(created_at__lt=cutoff).aggregate(latest=Max("id"))["latest"] or 0
    if not young:
        return None, settled
    previous = Event.objects.filter(id__lt=young[0]).order_by("-id").values_list("id", flat=True).first()
    present = young if previous is None else [previous, *young]
    for before, after in zip(present, present[1:], strict=False):
        if after != before + 1:
            return before, before
    return None, max(young[-1], settled)


def event_horizon(*, grace_s: float = EVENT_GAP_GRACE_S) -> int | None:
    """The highest Event id a reader may move past without ever skipping a row (None: no limit).

    Ids come from a sequence at INSERT time but rows become visible at COMMIT, in any order: a
    reader that saw id 10 may see id 9 a moment later, and ``id > last_seen`` would skip it for
    good. A hole is either such a transaction in flight or a rollback (which never fills). The id
    of a row in flight was drawn before the id of any row after it, so once the first row after a
    hole is ``grace_s`` old the hole is taken as a rollback; until then readers stop before it.
    Only rows of the last ``grace_s`` are looked at (created_at is indexed), across all tenants,
    since the sequence is shared.
    """
    return _event_horizon_scan(grace_s)[0]


@dataclass(frozen=True)
class _ReadLimit:
    id: int
    computed_at: float  # time.monotonic()


_read_limit_lock = threading.Lock()
_read_limit: _ReadLimit | None = None


def event_read_limit(*, max_age_s: float = 0.0, at_least: int | None = None) -> int:
    """The highest Event id a reader may pass now, the horizon as a number: unlike event_horizon
    it is safe to keep for a while, since rows committed later are above it.

    With ``max_age_s`` the value is shared by every reader of this process for that long (the
    scan is across all tenants; many sockets polling it each would load the database once per
    socket); ``at_least``: a row the caller knows was written (a live message's id) makes a
    cached value below it stale at once, so live events are not held back by the cache.
    """
    global _read_limit
    cached = _read_limit
    now = time.monotonic()
    if cached is not None and now - cached.computed_at < max_age_s and (at_least is None or at_least <= cached.id):
        return cached.id
    limit = _event_horizon_scan(EVENT_GAP_GRACE_S)[1]
    with _read_limit_lock:
        if _read_limit is None or _read_limit.computed_at < now:
            _read_limit = _ReadLimit(limit, now)
    return limit


def event_list_after(
    *,
    tenant,
    after_id: int,
    app: App | None = None,
    kinds=None,
    limit: int = EVENT_REPLAY_LIMIT,
    horizon_max_age_s: float = 0.0,
    at_least: int | None = None,
) -> list[Event]:
    """The tenant's Event rows with id > after_id, oldest first, up to the gap-safe horizon:
    a reader that always resumes after the last id it got never misses a committed row.
    ``horizon_max_age_s``/``at_least``: a horizon shared with other readers (event_read_limit)."""
    horizon = event_read_limit(max_age_s=horizon_max_age_s, at_least=at_least)
    events = Event.objects.for_tenant(tenant).filter(id__gt=after_id, id__lte=horizon)
    if app is not None:
        events = events.filter(app=app)
    if kinds is not None:
        events = events.filter(kind__in=kinds)
    return list(events.order_by("id")[:limit])


def event_latest_id(*, tenant, app: App | None = None) -> int:
    """Where a new reader starts (nothing older is replayed): the newest id below the horizon."""
    events = Event.objects.for_tenant(tenant)
    horizon = event_horizon()
    if horizon is not None:
        events = events.filter(id__lte=horizon)
    if app is not None:
        events = events.filter(app=app)
    return events.aggregate(latest=Max("id"))["latest"] or 0


def app_list_deleting(*, tenant) -> QuerySet[App]:
    """Apps being deleted: gone from the API at once, still stopping their VMs."""
    return App.objects.for_tenant(tenant).filter(deleting=True)


def instance_list_recent_ended(*, tenant, app: App, limit: int = 10) -> QuerySet[Instance]:
    """The app's last ended instances, newest first: how a failed boot is explained."""
    ended = Instance.objects.for_tenant(tenant).filter(app=app).exclude(status__in=INSTANCE_ACTIVE)
    return ended.select_related("host", "version").order_by("-updated_at")[:limit]


def deployment_list(*, tenant, app: App, limit: int = 5) -> QuerySet[Deployment]:
    return Deployment.objects.for_tenant(tenant).filter(app=app).order_by("-created_at")[:limit]


def event_last_id(*, tenant) -> int:
    """The id a page rendered now resumes its event stream after: the tenant's newest event,
    but never past the gap-safe horizon (a row still in flight there would be skipped)."""
    events = Event.objects.for_tenant(tenant)
    horizon = event_horizon()
    if horizon is not None:
        events = events.filter(id__lte=horizon)
    return events.order_by("-id").values_list("id", flat=True).first() or 0


def host_list_with_usage():
    """Hosts with what their live instances claim (vCPUs, MiB, count)."""
    from django.db.models import Count, Q, Sum

    from portal.models import ComputeHost

    live = Q(instances__status__in=INSTANCE_ACTIVE)
    return ComputeHost.objects.annotate(
        used_vcpus=Sum("instances__vcpus", filter=live, default=0),
        used_memory_mib=Sum("instances__memory_mib", filter=live, default=0),
        instance_count=Count("instances", filter=live),
    ).order_by("name")


@dataclass(frozen=True)
class ImagePullAllowance:
    """What a pull for the tenant may unpack to: what is left of its disk quota, except for the
    images it holds already (charged once; see portal.services.images)."""

    disk_left_bytes: int
    held_digests: frozenset[str]


def image_pull_allowance(*, tenant) -> ImagePullAllowance:
    from portal.services.images import IMAGE_CLAIM_KIND
    from tenants.models import Quota, ResourceClaim
    from tenants.selectors import quota_usage

    left_mib = Quota.objects.get(tenant=tenant).disk_mib - quota_usage(tenant=tenant)["disk_mib"]
    owner_ids = ResourceClaim.objects.for_tenant(tenant).filter(owner_kind=IMAGE_CLAIM_KIND)
    return ImagePullAllowance(
        disk_left_bytes=max(0, left_mib) * 1024 * 1024,
        held_digests=frozenset(f"sha256:{hex_digest}" for hex_digest in owner_ids.values_list("owner_id", flat=True)),
    )
