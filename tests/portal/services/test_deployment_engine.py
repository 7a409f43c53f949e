"""The deployment engine (portal.services.deployments.app_converge) on real PostgreSQL, with no
host worker: boots and stops are only queued (after commit, which these tests never reach), and the
instances' reports are played by calling instance_transition as the host would. Fast: no VM."""

import pytest

from portal.choices import DeploymentStatus, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, Deployment, Instance
from portal.platform_policy import platform_policy
from portal.services import apps as app_services
from portal.services.deployments import app_converge, app_record_launch_failure
from portal.services.instances import instance_transition
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.portal.factories import DEFINITION, ComputeHostFactory
from tests.tenants.factories import MembershipFactory

pytestmark = pytest.mark.django_db
S = InstanceStatus


@pytest.fixture
def access(tenant):
    ComputeHostFactory(memory_mib=64 * 1024)
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    return tenant_access_resolve(user=user, slug=tenant.slug)


def definition(**fields):
    return parse_app_definition({**DEFINITION, "id": "/web", **fields}, policy=platform_policy())


def live(app: App, status=None) -> list[Instance]:
    rows = Instance.objects.filter(app=app).exclude(status__in=[S.STOPPED, S.FAILED, S.LOST])
    return list(rows.filter(status=status) if status else rows.order_by("created_at"))


def report(instance: Instance, *statuses: str) -> None:
    for status in statuses:
        assert instance_transition(instance_id=instance.pk, to=status) is not None, (instance.status, status)


def make_healthy(instances) -> None:
    for instance in instances:
        report(instance, S.BOOTING, S.RUNNING, S.HEALTHY)


def finish_stops(app: App) -> None:
    for instance in live(app, S.STOPPING):
        report(instance, S.STOPPED)


def started(access, **fields) -> App:
    """An app whose start deployment has finished: every instance healthy."""
    deployment = app_services.app_create(access=access, definition=definition(**fields))
    make_healthy(live(deployment.app))
    app_converge(app_id=deployment.app_id)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SUCCEEDED
    return deployment.app


def counts(app: App) -> dict[str, int]:
    app.refresh_from_db()
    result: dict[str, int] = {}
    for instance in live(app):
        key = ("new" if instance.version_id == app.current_version_id else "old") + f"-{instance.status}"
        result[key] = result.get(key, 0) + 1
    return result


def test_a_new_app_gets_its_instances_placed_and_its_deployment_ends_when_they_are_healthy(access) -> None:
    deployment = app_services.app_create(access=access, definition=definition(instances=3))
    app = deployment.app
    assert all(instance.host_id is not None for instance in live(app))
    assert counts(app) == {"new-staged": 3}

    make_healthy(live(app)[:2])
    app_converge(app_id=app.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    assert deployment.progress["new_healthy"] == 2

    make_healthy(live(app, S.STAGED))
    app_converge(app_id=app.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SUCCEEDED


def test_a_rolling_upgrade_keeps_minimum_health_capacity_and_never_exceeds_max_capacity(access) -> None:
    strategy = {"upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}}
    app = started(access, instances=4, **strategy)

    upgrade = app_services.app_update(
        access=access, app=app, definition=definition(instances=4, cmd="sleep 7200", **strategy)
    )
    app_converge(app_id=app.pk)
    # ceil(4 * 0.5) = 2 healthy must stay; old + new never above floor(4 * 1) = 4, and an old
    # instance that is stopping still counts until it has ended.
    assert counts(app) == {"old-healthy": 2, "old-stopping": 2}
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-healthy": 2, "old-stopping": 2}
    finish_stops(app)
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-healthy": 2, "new-staged": 2}

    make_healthy(live(app, S.STAGED))
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-stopping": 2, "new-healthy": 2}
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-stopping": 2, "new-healthy": 2}
    finish_stops(app)
    app_converge(app_id=app.pk)
    assert counts(app) == {"new-healthy": 2, "new-staged": 2}
    make_healthy(live(app, S.STAGED))
    app_converge(app_id=app.pk)
    upgrade.refresh_from_db()
    assert upgrade.status == DeploymentStatus.SUCCEEDED
    assert counts(app) == {"new-healthy": 4}


def test_a_full_capacity_strategy_starts_one_extra_instance_to_make_progress(access) -> None:
    strategy = {"upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 0}}
    app = started(access, instances=2, **strategy)
    app_services.app_update(access=access, app=app, definition=definition(instances=2, cmd="sleep 7200", **strategy))
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-healthy": 2, "new-staged": 1}  # Marathon's special case
    make_healthy(live(app, S.STAGED))
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-healthy": 1, "old-stopping": 1, "new-healthy": 1}
    app_converge(app_id=app.pk)  # no second extra while one is still stopping
    assert counts(app) == {"old-healthy": 1, "old-stopping": 1, "new-healthy": 1}
    finish_stops(app)
    app_converge(app_id=app.pk)
    assert counts(app) == {"old-healthy": 1, "new-healthy": 1, "new-staged": 1}


@pytest.mark.parametrize(
    ("kill_selection", "survivor"),
    [("YOUNGEST_FIRST", 0), ("OLDEST_FIRST", 2)],
)
def test_a_scale_down_kills_unhealthy_ones_first_then_by_kill_selection(access, kill_selection, survivor) -> None:
    app = app_services.app_create(access=access, definition=definition(instances=4, killSelection=kill_selection)).app
    instances = live(app)
    make_healthy(instances[:3])  # the fourth (youngest) never became healthy
    app_services.app_scale(access=access, app=app, instances=1, force=True)  # the start is still running
    app_converge(app_id=app.pk)

    stopping = {instance.pk for instance in live(app, S.STOPPING)}
    kept = [instance for instance in instances if instance.pk not in stopping]
    assert [instance.pk for instance in kept] == [instances[survivor].pk]
    assert instances[3].pk in stopping


def test_a_failed_launch_backs_off_before_the_replacement_starts(access) -> None:
    deployment = app_services.app_create(access=access, definition=definition(instances=1, backoffSeconds=60))
    app = deployment.app
    (instance,) = live(app)
    report(instance, S.FAILED)
    app_record_launch_failure(app_id=app.pk)
    app_converge(app_id=app.pk)

    assert live(app) == []
    deployment.refresh_from_db()
    assert deployment.progress["note"].startswith("launch backoff until ")


def test_deleting_an_app_stops_every_instance_and_removes_the_app_once_they_have_stopped(access) -> None:
    app = started(access, instances=2)
    stop = app_services.app_delete(access=access, app=app)
    app_converge(app_id=app.pk)
    assert counts(app) == {"new-stopping": 2}

    finish_stops(app)
    app_converge(app_id=app.pk)
    assert not App.objects.filter(pk=app.pk).exists()
    assert Deployment.objects.get(pk=stop.pk).status == DeploymentStatus.SUCCEEDED
