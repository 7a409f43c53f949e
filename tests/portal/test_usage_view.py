"""The app page's usage endpoint: a member sees the samples of the app's live instances; another
tenant's member (and anyone with another tenant's app id) gets 404, never the figures."""

from __future__ import annotations

import pytest

from portal.choices import InstanceStatus
from portal.models import Instance
from portal.services.usage import usage_record
from tenants.choices import TenantRole
from tests.portal.services.test_usage import clean_usage  # noqa: F401 (fixture)
from tests.portal.test_views import deployed
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
MIB = 1024 * 1024


@pytest.fixture
def measured_app(tenant, member_of, clean_usage):  # noqa: F811
    host = compute_host_create("host-v")
    app = deployed(tenant, member_of(tenant, TenantRole.DEVELOPER), app_id="/measured", instances=1)
    Instance.objects.filter(app=app).update(host=host, status=InstanceStatus.RUNNING)
    instance = Instance.objects.get(app=app)
    for t, cpu in ((1.0, 0.1), (4.0, 0.3)):
        usage_record(
            host_name="host-v", samples=[{"instance_id": str(instance.pk), "t": t, "cpu": cpu, "mem": 50 * MIB}]
        )
    return app, instance


def test_a_viewer_gets_the_app_s_instances_with_their_samples(tenant, member_of, login, measured_app):
    app, instance = measured_app

    response = login(member_of(tenant, TenantRole.VIEWER)).get(f"/t/{tenant.slug}/apps/{app.pk}/usage/")

    assert response.status_code == 200
    [row] = response.json()["instances"]
    assert (row["id"], row["vcpus"], row["memory_bytes"]) == (str(instance.pk), 1, 128 * MIB)
    assert [(s["t"], s["cpu"], s["mem"]) for s in row["samples"]] == [(1.0, 0.1, 50 * MIB), (4.0, 0.3, 50 * MIB)]


def test_another_tenant_s_member_gets_404(tenant, other_tenant, member_of, login, measured_app):
    app, _ = measured_app

    outsider = login(member_of(other_tenant, TenantRole.OWNER))
    by_slug = outsider.get(f"/t/{tenant.slug}/apps/{app.pk}/usage/")
    by_own_slug = outsider.get(f"/t/{other_tenant.slug}/apps/{app.pk}/usage/")

    assert (by_slug.status_code, by_own_slug.status_code) == (404, 404)
    assert b"samples" not in by_slug.content + by_own_slug.content


def test_the_app_page_carries_the_usage_chart(tenant, member_of, login, measured_app):
    app, _ = measured_app

    page = login(member_of(tenant, TenantRole.VIEWER)).get(f"/t/{tenant.slug}/apps/{app.pk}/")

    assert f'data-usage-url="/t/{tenant.slug}/apps/{app.pk}/usage/"'.encode() in page.content
    assert b"js/usage.js" in page.content


def test_without_redis_the_usage_endpoint_answers_with_no_samples(tenant, member_of, login, measured_app):
    from django.test import override_settings

    app, instance = measured_app
    client = login(member_of(tenant, TenantRole.VIEWER))
    with override_settings(USAGE_REDIS_URL="redis://127.0.0.1:1/0"):  # nothing listens there
        response = client.get(f"/t/{tenant.slug}/apps/{app.pk}/usage/")

    assert response.status_code == 200
    body = response.json()
    assert body["samples_available"] is False
    assert [(row["id"], row["samples"]) for row in body["instances"]] == [(str(instance.pk), [])]
