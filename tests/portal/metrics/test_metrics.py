"""/metrics with Django's test client: who may read it, what it says (parsed with
prometheus-client's own parser), and that a scrape costs the same number of queries whatever
the number of apps and instances."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from portal.choices import InstanceStatus, VolumeState
from portal.models import Instance, Volume
from portal.services.usage import usage_record
from portal.shared_redis import redis_client
from tenants.choices import TenantRole
from tenants.models import Quota
from tests.portal.services.test_usage import clean_usage  # noqa: F401 (fixture)
from tests.portal.test_views import deployed
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
MIB = 1024 * 1024
TOKEN = "scrape-token-for-tests-0123456789"


@pytest.fixture(autouse=True)
def scrape_token(settings):
    settings.METRICS_SCRAPE_TOKEN = TOKEN


@pytest.fixture
def clean_request_counts():
    from portal.metrics.requests import COUNTS_KEY, DURATIONS_KEY, _redis

    _redis().delete(COUNTS_KEY, DURATIONS_KEY)
    yield
    _redis().delete(COUNTS_KEY, DURATIONS_KEY)


def scrape(client, **headers):
    return client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"} | headers)


def labels(**values) -> tuple:
    return tuple(sorted(values.items()))


def samples_of(response) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}"""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_without_credentials_or_with_a_wrong_token_it_is_401(client):
    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    empty = client.get("/metrics", headers={"Authorization": "Bearer "})

    assert (anonymous.status_code, wrong.status_code, empty.status_code) == (401, 401, 401)
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    assert b"hypervm_" not in anonymous.content + wrong.content


def test_no_token_configured_lets_no_bearer_in(client, settings):
    settings.METRICS_SCRAPE_TOKEN = ""

    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_tenant_owner_is_refused_and_a_platform_admin_reads_it(client, tenant, member_of, platform_admin):
    client.force_login(member_of(tenant, TenantRole.OWNER))
    owner = client.get("/metrics")
    client.force_login(platform_admin)
    admin = client.get("/metrics")

    assert owner.status_code == 403 and b"hypervm_" not in owner.content
    assert admin.status_code == 200 and b"hypervm_host_port_pool_size" in admin.content


def test_the_token_reads_it_gzipped_when_asked(client):
    response = scrape(client, **{"Accept-Encoding": "gzip"})

    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert response["Content-Type"].startswith("text/plain")


@pytest.fixture
def platform(tenant, member_of, clean_usage, clean_request_counts):  # noqa: F811
    """Host m1 with app /m of 2 running instances (one with usage samples, one healthy check
    state), an ended instance that replaced nothing, and one restart."""
    host = compute_host_create("m1", blocked_ports={"20001": 9e12})
    developer = member_of(tenant, TenantRole.DEVELOPER)
    app = deployed(tenant, developer, app_id="/m", instances=2)
    first, second = Instance.objects.filter(app=app).order_by("created_at")
    start = timezone.now() - timedelta(minutes=5)
    phase_times = {
        "pulling": start.isoformat(),
        "preparing": (start + timedelta(seconds=0.2)).isoformat(),
        "booting": (start + timedelta(seconds=1.2)).isoformat(),
        "running": (start + timedelta(seconds=3.2)).isoformat(),
    }
    Instance.objects.filter(pk=first.pk).update(
        host=host, status=InstanceStatus.RUNNING, host_ports=[20010, 20011], phase_times=phase_times
    )
    Instance.objects.filter(pk=second.pk).update(
        host=host, status=InstanceStatus.UNHEALTHY, host_ports=[20012], restart_of=first, health={"alive": False}
    )
    usage_record(host_name="m1", samples=[{"instance_id": str(first.pk), "t": 1.0, "cpu": 0.25, "mem": 90 * MIB}])
    for slot, used in ((0, 5 * MIB), (1, None)):  # one its host has measured, one it has not yet
        Volume.objects.create(
            tenant=tenant,
            app=app,
            app_marathon_id="/m",
            slot=slot,
            container_path="data",
            size_mib=64,
            host=host,
            state=VolumeState.CREATED,
            used_bytes=used,
        )
    return tenant, app, host, first, second


def test_hosts_apps_and_instances_are_in_the_figures(client, platform):
    tenant, app, host, first, second = platform
    on_host = labels(host="m1")
    of_app = labels(app="/m", tenant=tenant.slug)

    figures = samples_of(scrape(client))

    assert figures["hypervm_host_vms"][on_host] == 2
    assert figures["hypervm_host_up"][on_host] == 1
    assert 0 <= figures["hypervm_host_heartbeat_age_seconds"][on_host] < 60
    assert figures["hypervm_host_cpu_capacity_vcpus"][labels(host="m1", virt_type="qemu")] == 8
    assert figures["hypervm_host_cpu_allocated_vcpus"][on_host] == first.vcpus + second.vcpus
    assert figures["hypervm_host_memory_capacity_bytes"][on_host] == 16384 * MIB
    assert figures["hypervm_host_memory_allocated_bytes"][on_host] == 2 * 128 * MIB
    assert figures["hypervm_host_cpu_used_cores"][on_host] == 0.25
    assert figures["hypervm_host_memory_used_bytes"][on_host] == 90 * MIB
    assert figures["hypervm_host_ports_in_use"][on_host] == 3
    assert figures["hypervm_host_ports_blocked"][on_host] == 1
    assert figures["hypervm_host_volumes"][on_host] == 2
    assert figures["hypervm_host_volume_size_bytes"][on_host] == 128 * MIB
    assert figures["hypervm_host_volume_used_bytes"][on_host] == 5 * MIB
    assert figures["hypervm_app_instances"][labels(app="/m", tenant=tenant.slug, status="running")] == 1
    assert figures["hypervm_app_instances"][labels(app="/m", tenant=tenant.slug, status="unhealthy")] == 1
    assert figures["hypervm_app_instances_desired"][of_app] == 2
    assert figures["hypervm_app_restarts_total"][of_app] == 1
    one = labels(app="/m", instance=str(first.pk), tenant=tenant.slug)
    other = labels(app="/m", instance=str(second.pk), tenant=tenant.slug)
    info = labels(app="/m", instance=str(first.pk), tenant=tenant.slug, host="m1", status="running")
    assert figures["hypervm_instance_info"][info] == 1
    assert figures["hypervm_instance_cpu_used_cores"] == {one: 0.25}
    assert figures["hypervm_instance_memory_used_bytes"] == {one: 90 * MIB}
    assert figures["hypervm_instance_healthy"] == {other: 0}


def test_boot_phases_are_histograms_per_app(client, platform):
    tenant, *_ = platform
    booting = labels(app="/m", phase="booting", tenant=tenant.slug)
    pulling = labels(app="/m", phase="pulling", tenant=tenant.slug)

    figures = samples_of(scrape(client))

    buckets = {
        dict(labels)["le"]: value
        for labels, value in figures["hypervm_app_boot_phase_duration_seconds_bucket"].items()
        if (("phase", "booting") in labels)
    }
    assert buckets["1.0"] == 0 and buckets["2.5"] == 1 and buckets["+Inf"] == 1  # 2 s
    assert figures["hypervm_app_boot_phase_duration_seconds_sum"][booting] == pytest.approx(2.0)
    assert figures["hypervm_app_boot_phase_duration_seconds_count"][pulling] == 1
    assert (
        labels(app="/m", phase="running", tenant=tenant.slug)
        not in figures["hypervm_app_boot_phase_duration_seconds_count"]
    )  # never healthy: running has not ended


def test_celery_queue_lengths_and_api_requests_are_counted(client, platform, tenant, member_of, settings):
    _, _, host, *_ = platform
    broker = redis_client(settings.CELERY_BROKER_URL)
    broker.delete(host.queue)
    broker.lpush(host.queue, "a", "b", "c")
    client.force_login(member_of(tenant, TenantRole.VIEWER))
    try:
        client.get("/v2/apps")
        client.get("/api/v1/tenants/")
        client.get("/api/v1/tenants/no-such-tenant/")
        figures = samples_of(scrape(client))
    finally:
        broker.delete(host.queue)

    assert figures["hypervm_celery_queue_length"][labels(queue=host.queue)] == 3
    requests = figures["hypervm_api_requests_total"]
    assert requests[labels(api="marathon", method="GET", route="v2/apps", status="200")] == 1
    tenant_route = "api/v1/tenants/(?P<slug>[^/.]+)/$"  # DRF's router: the pattern, never the slug asked for
    assert requests[labels(api="v1", method="GET", route=tenant_route, status="404")] == 1
    assert figures["hypervm_api_request_duration_seconds_count"][labels(api="v1", method="GET")] == 2


def test_a_scrape_costs_the_same_queries_for_2_or_12_apps(client, tenant, member_of, clean_usage):  # noqa: F811
    host = compute_host_create("mq")
    developer = member_of(tenant, TenantRole.DEVELOPER)
    Quota.objects.filter(tenant=tenant).update(
        vcpus=1000, memory_mib=10**6, instances=1000, disk_mib=10**7, published_ports=1000
    )

    def deploy(count: int) -> None:
        for n in range(count):
            app = deployed(tenant, developer, app_id=f"/q{Instance.objects.count()}-{n}", instances=2)
            Instance.objects.filter(app=app).update(
                host=host,
                status=InstanceStatus.RUNNING,
                phase_times={"booting": timezone.now().isoformat(), "running": timezone.now().isoformat()},
            )

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert scrape(client).status_code == 200
        return len(captured.captured_queries)

    deploy(2)
    few = queries()
    deploy(10)

    assert queries() == few
    assert few <= 8


def test_a_marathon_client_s_token_still_gets_marathon_s_json(client, tenant, member_of):
    from tenants.services import api_token_create

    _, key = api_token_create(user=member_of(tenant, TenantRole.VIEWER), name="m", tenant=tenant)

    response = client.get("/metrics", headers={"Authorization": f"Token {key}"})

    assert response.status_code == 200
    assert response.json()["gauges"]["apps"] == {"value": 0}


def test_requests_served_through_the_asgi_chain_are_counted(clean_request_counts):
    import asyncio

    from django.test import AsyncClient

    from portal.metrics.requests import request_figures

    response = asyncio.run(AsyncClient().get("/v2/apps"))

    assert response.status_code == 401
    assert request_figures().counts == {("marathon", "GET", "v2/apps", "401"): 1}


def test_an_empty_phase_stamp_reads_as_never_entered(client, platform):
    tenant, app, host, first, second = platform
    stamps = Instance.objects.get(pk=first.pk).phase_times
    stamps["preparing"] = ""
    Instance.objects.filter(pk=first.pk).update(phase_times=stamps)

    figures = samples_of(scrape(client))

    pulling = labels(app="/m", phase="pulling", tenant=tenant.slug)
    assert figures["hypervm_app_boot_phase_duration_seconds_sum"][pulling] == pytest.approx(1.2)  # to booting


def test_without_redis_the_database_figures_still_go_out(client, platform):
    from django.test import override_settings

    nowhere = "redis://127.0.0.1:1/0"  # nothing listens there
    with override_settings(USAGE_REDIS_URL=nowhere, CELERY_BROKER_URL=nowhere):
        response = scrape(client)

    figures = samples_of(response)
    assert response.status_code == 200
    assert figures["hypervm_host_vms"][labels(host="m1")] == 2
    assert figures["hypervm_metrics_redis_up"] == {(): 0}
    assert "hypervm_instance_cpu_used_cores" not in figures and "hypervm_celery_queue_length" not in figures
