import threading

import pytest
from django.db import close_old_connections, connection, transaction

from tenants.errors import QuotaExceeded
from tenants.models import Quota, ResourceClaim
from tenants.selectors import quota_report, quota_usage
from tenants.services import ResourceRequest, claim_release, quota_reserve, quota_update
from tests.tenants.factories import TenantFactory, UserFactory


def reserve(tenant, owner_id, **amounts):
    with transaction.atomic():
        return quota_reserve(
            tenant=tenant, owner_kind="instance", owner_id=owner_id, request=ResourceRequest(**amounts)
        )


@pytest.mark.django_db
def test_usage_is_the_sum_of_live_claims_and_release_frees_it(tenant):
    reserve(tenant, "a", vcpus=2, memory_mib=512, instances=1)
    reserve(tenant, "b", vcpus=1, memory_mib=256, instances=1, published_ports=1)
    assert quota_usage(tenant=tenant) | {} == {
        "vcpus": 3,
        "memory_mib": 768,
        "disk_mib": 0,
        "instances": 2,
        "volumes": 0,
        "networks": 0,
        "published_ports": 1,
    }
    claim_release(tenant=tenant, owner_kind="instance", owner_id="a")
    assert quota_usage(tenant=tenant)["vcpus"] == 1


@pytest.mark.django_db
def test_reservation_over_a_limit_names_the_quota_and_writes_nothing(tenant):
    Quota.objects.filter(tenant=tenant).update(memory_mib=1000)
    reserve(tenant, "a", memory_mib=600)
    with pytest.raises(QuotaExceeded) as excinfo:
        reserve(tenant, "b", memory_mib=600, vcpus=1)
    assert (excinfo.value.resource, excinfo.value.limit, excinfo.value.used, excinfo.value.requested) == (
        "memory_mib",
        1000,
        600,
        600,
    )
    assert list(ResourceClaim.objects.values_list("owner_id", flat=True)) == ["a"]


@pytest.mark.django_db(transaction=True)
def test_quota_reserve_refuses_to_run_outside_a_transaction(tenant):
    with pytest.raises(RuntimeError):
        quota_reserve(tenant=tenant, owner_kind="instance", owner_id="x", request=ResourceRequest(vcpus=1))


@pytest.mark.django_db
def test_lowering_a_limit_below_usage_is_accepted_and_blocks_new_work(tenant):
    reserve(tenant, "a", vcpus=4)
    quota_update(actor=UserFactory(is_staff=True), tenant=tenant, limits={"vcpus": 2})
    line = next(line for line in quota_report(tenant=tenant) if line.resource == "vcpus")
    assert (line.used, line.limit, line.over) == (4, 2, True)
    with pytest.raises(QuotaExceeded):
        reserve(tenant, "b", vcpus=1)
    assert reserve(tenant, "c", memory_mib=10).memory_mib == 10  # other resources still fit


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_reservations_for_the_last_slot_exactly_one_wins():
    """Real PostgreSQL, two connections: each thread reads usage and inserts inside its own
    transaction; the barrier makes them race. Without the quota row lock both would see
    one free slot and both would win."""
    tenant = TenantFactory()
    Quota.objects.filter(tenant=tenant).update(instances=3)
    reserve(tenant, "existing-1", instances=1)
    reserve(tenant, "existing-2", instances=1)
    barrier = threading.Barrier(2, timeout=10)
    outcomes: dict[str, str] = {}

    def contender(name):
        try:
            with transaction.atomic():
                barrier.wait()
                quota_reserve(tenant=tenant, owner_kind="instance", owner_id=name, request=ResourceRequest(instances=1))
                # Hold the transaction open so the other thread truly overlaps.
                connection.cursor().execute("SELECT pg_sleep(0.3)")
            outcomes[name] = "won"
        except QuotaExceeded:
            outcomes[name] = "refused"
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=contender, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes.values()) == ["refused", "won"]
    assert quota_usage(tenant=tenant)["instances"] == 3
