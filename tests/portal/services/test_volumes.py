"""Local persistent volumes on the portal side, on real PostgreSQL (the host played by the fake
driver): admission with the volumes and disk_mib quotas, resident slots (pinned to their host,
reused by relaunches, kept on scale-down), wipe and app deletion."""

import pytest
from django.test import override_settings

from portal.choices import InstanceStatus, VolumeState
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Instance, Volume
from portal.platform_policy import platform_policy
from portal.services import apps as app_services
from portal.services.deployments import app_converge
from portal.services.instances import instance_transition
from portal.services.volumes import VOLUME_CLAIM_KIND, volume_destroyed
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.errors import InvalidInput, QuotaExceeded
from tenants.models import Quota, ResourceClaim
from tenants.selectors import quota_usage
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import MembershipFactory

APP = {
    "id": "/db",
    "cmd": "sleep 3600",
    "cpus": 0.1,
    "mem": 64,
    "disk": 100,
    "container": {
        "docker": {"image": "demo/h:1"},
        "volumes": [{"containerPath": "data", "mode": "RW", "persistent": {"size": 500}}],
    },
}


def access_for(tenant):
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    return tenant_access_resolve(user=user, slug=tenant.slug)


def definition_of(**fields):
    return parse_app_definition({**APP, **fields}, policy=platform_policy())


def deploy(tenant, **fields) -> App:
    if not ComputeHost.objects.exists():
        compute_host_create("host-v", memory_mib=8192)
    return app_services.app_create(access=access_for(tenant), definition=definition_of(**fields)).app


def live(app: App) -> list[Instance]:
    return list(app.instances.exclude(status__in=("stopped", "failed", "lost")).order_by("created_at"))


def end(instance: Instance, to=InstanceStatus.STOPPED) -> None:
    instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPING)
    instance_transition(instance_id=instance.pk, to=to)


def run(instance: Instance) -> None:
    for status in (InstanceStatus.BOOTING, InstanceStatus.RUNNING):
        instance_transition(instance_id=instance.pk, to=status)


@pytest.mark.django_db
def test_each_instance_gets_its_own_volume_claimed_of_the_volumes_and_disk_quotas(tenant) -> None:
    app = deploy(tenant, instances=2)

    volumes = list(Volume.objects.filter(app=app).order_by("slot"))
    assert [(v.slot, v.container_path, v.size_mib, v.state) for v in volumes] == [
        (0, "data", 500, VolumeState.RESERVED),
        (1, "data", 500, VolumeState.RESERVED),
    ]
    assert {v.instance_id for v in volumes} == {i.pk for i in live(app)}
    # Placed with their instance: the slot's host is the instance's, in the host's pool.
    assert {(v.host.name, v.pool_name) for v in volumes} == {("host-v", "hvm-vol-host-v")}
    usage = quota_usage(tenant=tenant)
    assert (usage["volumes"], usage["disk_mib"]) == (2, 2 * 100 + 2 * 500)
    assert ResourceClaim.objects.filter(tenant=tenant, owner_kind=VOLUME_CLAIM_KIND).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("limits", "resource"),
    [({"volumes": 1}, "volumes"), ({"disk_mib": 1000}, "disk_mib")],
)
def test_a_deploy_over_the_volume_quotas_is_a_403_naming_the_quota_and_stores_nothing(tenant, limits, resource):
    Quota.objects.filter(tenant=tenant).update(**limits)

    with pytest.raises(QuotaExceeded) as raised:
        deploy(tenant, instances=2)

    assert raised.value.resource == resource
    assert raised.value.status_code == 403
    assert (App.objects.filter(tenant=tenant).count(), Volume.objects.count(), ResourceClaim.objects.count()) == (
        0,
        0,
        0,
    )


@pytest.mark.django_db
def test_host_path_volumes_are_refused_at_their_path_and_nothing_is_stored(tenant) -> None:
    compute_host_create("host-v")
    definition = parse_app_definition(
        {
            **APP,
            "container": {
                "docker": {"image": "demo/h:1"},
                "volumes": [
                    {"containerPath": "data", "persistent": {"size": 10}},
                    {"containerPath": "/var/lib/data", "hostPath": "data", "mode": "RW"},
                ],
            },
        }
    )

    with pytest.raises(InvalidInput) as raised:
        app_services.app_create(access=access_for(tenant), definition=definition)

    assert raised.value.field == "/container/volumes(1)/hostPath"
    assert (App.objects.count(), Volume.objects.count()) == (0, 0)


@pytest.mark.django_db
def test_more_volumes_than_the_platform_attaches_are_refused(tenant) -> None:
    compute_host_create("host-v")
    definition = parse_app_definition(
        {
            **APP,
            "container": {
                "docker": {"image": "demo/h:1"},
                "volumes": [{"containerPath": f"v{i}", "persistent": {"size": 1}} for i in range(9)],
            },
        }
    )

    with pytest.raises(InvalidInput) as raised:
        app_services.app_create(access=access_for(tenant), definition=definition)

    assert raised.value.field == "/container/volumes"
    assert "at most 8" in raised.value.message


@pytest.mark.django_db
def test_an_update_that_changes_the_volumes_is_refused(tenant) -> None:
    app = deploy(tenant)
    changed = definition_of(
        container={"docker": {"image": "demo/h:1"}, "volumes": [{"containerPath": "data", "persistent": {"size": 900}}]}
    )

    with pytest.raises(InvalidInput) as raised:
        app_services.app_update(access=access_for(tenant), app=app, definition=changed)

    assert raised.value.field == "/container/volumes"


@pytest.mark.django_db
def test_scale_down_keeps_the_volume_reserved_and_scaling_up_takes_it_again(tenant) -> None:
    app = deploy(tenant, instances=1)
    (first,) = live(app)
    volume = Volume.objects.get(app=app)
    access = access_for(tenant)

    app_services.app_scale(access=access, app=app, instances=0, force=True)
    app_converge(app_id=app.pk)
    end(Instance.objects.get(pk=first.pk))

    assert Volume.objects.get(pk=volume.pk).state == VolumeState.RESERVED
    assert quota_usage(tenant=tenant)["volumes"] == 1  # still held while scaled down
    app_services.app_scale(access=access, app=app, instances=1, force=True)
    app_converge(app_id=app.pk)
    (second,) = live(app)
    assert second.pk != first.pk
    assert Volume.objects.get(pk=volume.pk).instance_id == second.pk
    assert second.host_id == volume.host_id
    assert Volume.objects.filter(app=app).count() == 1


@pytest.mark.django_db
def test_a_rolling_restart_stops_the_old_instance_before_the_new_one_takes_its_volume(tenant) -> None:
    app = deploy(tenant, instances=1)
    (old,) = live(app)
    run(old)
    volume = Volume.objects.get(app=app)

    app_services.app_restart(access=access_for(tenant), app=app, force=True)
    app_converge(app_id=app.pk)

    old.refresh_from_db()
    assert old.status == InstanceStatus.STOPPING  # resident: no extra instance beside it
    assert [i.pk for i in live(app)] == [old.pk]
    assert "waiting for its volume" in app.deployments.first().progress["note"]
    instance_transition(instance_id=old.pk, to=InstanceStatus.STOPPED)
    app_converge(app_id=app.pk)
    (new,) = live(app)
    assert new.pk != old.pk
    assert Volume.objects.get(pk=volume.pk).instance_id == new.pk
    assert Volume.objects.filter(app=app).count() == 1


@pytest.mark.django_db
def test_an_instance_stays_with_its_volumes_host_and_waits_while_that_host_is_down(tenant) -> None:
    app = deploy(tenant, instances=1)
    (first,) = live(app)
    home = first.host
    compute_host_create("host-w", memory_mib=65536)  # roomier: placement would prefer it
    ComputeHost.objects.filter(pk=home.pk).update(state="down")

    end(first, to=InstanceStatus.LOST)
    app_converge(app_id=app.pk)

    (waiting,) = live(app)
    assert waiting.host_id is None
    assert waiting.status == InstanceStatus.STAGED
    assert "Waiting for host host-v, which holds the instance's volumes" in waiting.failure_reason
    ComputeHost.objects.filter(pk=home.pk).update(state="up")
    app_converge(app_id=app.pk)
    waiting.refresh_from_db()
    assert waiting.host_id == home.pk


@pytest.mark.django_db
def test_wipe_destroys_the_volume_once_its_instance_stopped_and_the_replacement_gets_a_fresh_one(tenant) -> None:
    app = deploy(tenant, instances=1)
    (first,) = live(app)
    old_volume = Volume.objects.get(app=app)

    app_services.instance_kill(access=access_for(tenant), instances=[first], wipe=True)

    assert Volume.objects.get(pk=old_volume.pk).state == VolumeState.DESTROYING
    instance_transition(instance_id=first.pk, to=InstanceStatus.STOPPED)
    volume_destroyed(volume_id=old_volume.pk)  # what the host's destroy_volume task confirms
    app_converge(app_id=app.pk)
    (replacement,) = live(app)
    fresh = Volume.objects.get(app=app)
    assert fresh.pk != old_volume.pk
    assert fresh.instance_id == replacement.pk
    assert quota_usage(tenant=tenant)["volumes"] == 1


@pytest.mark.django_db
def test_wipe_and_scale_cannot_be_combined(tenant) -> None:
    app = deploy(tenant)

    with pytest.raises(InvalidInput):
        app_services.instance_kill(access=access_for(tenant), instances=live(app), wipe=True, scale=True)

    assert Volume.objects.get(app=app).state == VolumeState.RESERVED


@pytest.mark.django_db
def test_deleting_the_app_destroys_every_volume_and_gives_the_quota_back(tenant) -> None:
    app = deploy(tenant, instances=2)
    app_services.app_scale(access=access_for(tenant), app=app, instances=1, force=True)
    app_converge(app_id=app.pk)
    ids = set(Volume.objects.filter(app=app).values_list("pk", flat=True))

    app_services.app_delete(access=access_for(tenant), app=app, force=True)
    app_converge(app_id=app.pk)
    assert set(Volume.objects.filter(state=VolumeState.DESTROYING).values_list("pk", flat=True)) == ids
    for instance in Instance.objects.filter(app=app, status=InstanceStatus.STOPPING):
        instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPED)
    app_converge(app_id=app.pk)
    for volume_id in ids:
        volume_destroyed(volume_id=volume_id)

    assert not App.objects.filter(pk=app.pk).exists()
    assert Volume.objects.count() == 0
    assert quota_usage(tenant=tenant)["volumes"] == quota_usage(tenant=tenant)["disk_mib"] == 0


@pytest.mark.django_db
@override_settings(INSTANCE_DEFAULT_DISK_MIB=256)
def test_two_tenants_volumes_never_share_a_slot(tenant, other_tenant) -> None:
    mine = deploy(tenant)
    theirs = deploy(other_tenant)

    assert {v.tenant_id for v in Volume.objects.filter(app=mine)} == {tenant.pk}
    assert {v.tenant_id for v in Volume.objects.filter(app=theirs)} == {other_tenant.pk}
    assert {v.instance.tenant_id for v in Volume.objects.filter(app=theirs)} == {other_tenant.pk}
