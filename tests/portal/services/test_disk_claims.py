"""The tenant's disk_mib quota is claimed by each instance's writable layer (at admission, with its
other claims) and once per image digest in use (of its unpacked size), on real PostgreSQL."""

import threading

import pytest
from django.db import close_old_connections, connection, transaction
from django.test import override_settings

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, Instance
from portal.platform_policy import platform_policy
from portal.selectors import image_pull_allowance
from portal.services import apps as app_services
from portal.services.deployments import instance_disk_mib
from portal.services.images import IMAGE_CLAIM_KIND, instance_image_claim
from portal.services.instances import instance_transition
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.errors import InvalidInput, QuotaExceeded
from tenants.models import Quota, ResourceClaim
from tenants.selectors import quota_usage
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import MembershipFactory

MIB = 1024 * 1024
APP = {"id": "/web", "cmd": "sleep 3600", "cpus": 0.1, "mem": 64, "container": {"docker": {"image": "demo/h:1"}}}
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def deploy(tenant, **fields) -> App:
    compute_host_create("host-d", memory_mib=8192)
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    definition = parse_app_definition({**APP, **fields}, policy=platform_policy())
    return app_services.app_create(access=access, definition=definition).app


def instances(app: App) -> list[Instance]:
    return list(app.instances.order_by("created_at"))


@pytest.mark.django_db
@override_settings(INSTANCE_DEFAULT_DISK_MIB=256)
def test_the_writable_layer_is_the_apps_disk_or_the_platform_default() -> None:
    assert instance_disk_mib(parse_app_definition(APP)) == 256
    assert instance_disk_mib(parse_app_definition({**APP, "disk": 100.2})) == 101


@pytest.mark.django_db
def test_each_instance_claims_its_writable_layer_and_gives_it_back_when_it_ends(tenant) -> None:
    app = deploy(tenant, instances=2, disk=300)

    assert quota_usage(tenant=tenant)["disk_mib"] == 600
    first, second = instances(app)
    instance_transition(instance_id=first.pk, to=InstanceStatus.FAILED, failure_reason="test")
    assert quota_usage(tenant=tenant)["disk_mib"] == 300


@pytest.mark.django_db
def test_a_deploy_whose_disk_times_instances_exceeds_the_quota_is_refused_and_stores_nothing(tenant) -> None:
    Quota.objects.filter(tenant=tenant).update(disk_mib=1000)

    with pytest.raises(QuotaExceeded) as raised:
        deploy(tenant, instances=3, disk=400)

    assert raised.value.resource == "disk_mib"
    assert raised.value.message == "Quota exceeded for disk_mib: limit 1000, in use 0, requested 1200."
    assert (App.objects.filter(tenant=tenant).count(), ResourceClaim.objects.filter(tenant=tenant).count()) == (0, 0)


@pytest.mark.django_db
def test_a_writable_layer_larger_than_the_guest_takes_is_refused_at_its_path(tenant, settings) -> None:
    # Even where a platform raises its disk cap past what the guest init takes, the service refuses.
    settings.APP_DEFINITION_LIMITS = settings.APP_DEFINITION_LIMITS | {"max_disk_mib": 4.0 * 1024 * 1024}
    Quota.objects.filter(tenant=tenant).update(disk_mib=4 * 1024 * 1024)

    with pytest.raises(InvalidInput) as raised:
        deploy(tenant, disk=1024 * 1024 + 1)

    assert (raised.value.field, raised.value.message) == ("/disk", "At most 1048576 MiB.")
    assert not App.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_an_image_is_claimed_once_per_tenant_and_released_when_no_instance_runs_it(tenant) -> None:
    first, second, third = instances(deploy(tenant, instances=3, disk=10))

    assert instance_image_claim(instance_id=first.pk, manifest_digest=DIGEST_A, unpacked_bytes=50 * MIB + 1)
    assert instance_image_claim(instance_id=second.pk, manifest_digest=DIGEST_A, unpacked_bytes=50 * MIB + 1)
    assert instance_image_claim(instance_id=third.pk, manifest_digest=DIGEST_B, unpacked_bytes=7 * MIB)
    assert quota_usage(tenant=tenant)["disk_mib"] == 30 + 51 + 7
    assert image_pull_allowance(tenant=tenant).held_digests == {DIGEST_A, DIGEST_B}

    instance_transition(instance_id=first.pk, to=InstanceStatus.FAILED, failure_reason="test")
    assert sorted(ResourceClaim.objects.filter(tenant=tenant, owner_kind=IMAGE_CLAIM_KIND).values_list("disk_mib")) == [
        (7,),
        (51,),
    ]  # the second instance still runs image A
    instance_transition(instance_id=second.pk, to=InstanceStatus.FAILED, failure_reason="test")
    instance_transition(instance_id=third.pk, to=InstanceStatus.FAILED, failure_reason="test")
    assert quota_usage(tenant=tenant)["disk_mib"] == 0
    assert not ResourceClaim.objects.filter(tenant=tenant, owner_kind=IMAGE_CLAIM_KIND).exists()


@pytest.mark.django_db
def test_an_image_over_the_quota_left_is_refused_and_nothing_is_written(tenant) -> None:
    Quota.objects.filter(tenant=tenant).update(disk_mib=100)
    (instance,) = instances(deploy(tenant, disk=60))
    assert image_pull_allowance(tenant=tenant).disk_left_bytes == 40 * MIB

    with pytest.raises(QuotaExceeded) as raised, transaction.atomic():
        instance_image_claim(instance_id=instance.pk, manifest_digest=DIGEST_A, unpacked_bytes=41 * MIB)

    assert raised.value.resource == "disk_mib"
    instance.refresh_from_db()
    assert instance.image_digest == ""
    assert quota_usage(tenant=tenant)["disk_mib"] == 60


@pytest.mark.django_db
def test_an_ended_instance_claims_no_image(tenant) -> None:
    (instance,) = instances(deploy(tenant, disk=10))
    instance_transition(instance_id=instance.pk, to=InstanceStatus.FAILED, failure_reason="test")

    assert not instance_image_claim(instance_id=instance.pk, manifest_digest=DIGEST_A, unpacked_bytes=MIB)
    assert quota_usage(tenant=tenant)["disk_mib"] == 0


@pytest.mark.django_db
def test_the_tenant_overview_shows_disk_use(tenant, member_of, login) -> None:
    first, _ = instances(deploy(tenant, instances=2, disk=300))
    instance_image_claim(instance_id=first.pk, manifest_digest=DIGEST_A, unpacked_bytes=51 * MIB)

    page = login(member_of(tenant, TenantRole.VIEWER)).get(f"/t/{tenant.slug}/").content.decode()

    disk_row = page[page.index('data-resource="disk_mib"') :].split("</tr>", 1)[0]
    assert 'aria-valuenow="651"' in disk_row
    assert "651 / 20480" in disk_row


@pytest.mark.django_db(transaction=True)
def test_two_images_racing_for_the_quota_left_exactly_one_is_claimed(tenant) -> None:
    """Two hosts finish pulling two new images at once, each capped by the same quota left:
    the claims serialise on the quota row, so only one fits."""
    Quota.objects.filter(tenant=tenant).update(disk_mib=100)
    left, right = instances(deploy(tenant, instances=2, disk=10))
    barrier = threading.Barrier(2, timeout=10)
    outcomes: dict[str, str] = {}

    def contender(instance, digest):
        try:
            barrier.wait()
            instance_image_claim(instance_id=instance.pk, manifest_digest=digest, unpacked_bytes=60 * MIB)
            outcomes[digest] = "claimed"
        except QuotaExceeded:
            outcomes[digest] = "refused"
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=contender, args=pair) for pair in ((left, DIGEST_A), (right, DIGEST_B))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes.values()) == ["claimed", "refused"]
    assert quota_usage(tenant=tenant)["disk_mib"] == 20 + 60
