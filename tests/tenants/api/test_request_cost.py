"""What every authenticated API request costs before its view's own work: one query for the token,
one for the tenant with the caller's role, and throttle counters on a Redis connection the
process already holds (bench/bench_api_load.py measures the latency this buys)."""

import threading
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def token_client(tenant, member_of):
    user = member_of(tenant, TenantRole.DEVELOPER)
    token, key = services.api_token_create(user=user, name="ci", tenant=tenant)
    return token, APIClient(HTTP_AUTHORIZATION=f"Token {key}")


def test_a_marathon_read_with_a_token_used_a_moment_ago_costs_three_queries(token_client, django_assert_num_queries):
    _, client = token_client
    assert client.get("/v2/apps").status_code == 200
    # The token, the tenant with the caller's role, the apps: no write, no second access query.
    with django_assert_num_queries(3):
        assert client.get("/v2/apps").status_code == 200


def test_a_token_last_used_over_a_minute_ago_is_marked_used_again(token_client):
    token, client = token_client
    long_ago = timezone.now() - timedelta(minutes=2)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=long_ago)
    assert client.get("/v2/apps").status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at > long_ago


def test_access_in_one_query_keeps_each_callers_role(tenant, member_of, platform_admin, django_assert_num_queries):
    viewer = member_of(tenant, TenantRole.VIEWER)
    with django_assert_num_queries(1):
        access = tenant_access_resolve(user=viewer, slug=tenant.slug)
    assert (access.tenant, access.role, access.is_platform_admin) == (tenant, TenantRole.VIEWER, False)
    admin_access = tenant_access_resolve(user=platform_admin, slug=tenant.slug)
    assert (admin_access.role, admin_access.is_platform_admin) == (None, True)
    assert not hasattr(admin_access.tenant, "_role")


def test_requests_in_other_threads_share_the_throttle_caches_redis_client():
    # Django keeps a cache object per thread (per request context under ASGI); its Redis client
    # and connection pool must be the process's, not one per request.
    clients = []
    thread = threading.Thread(target=lambda: clients.append(caches["default"]._cache))
    thread.start()
    thread.join()
    assert clients == [caches["default"]._cache]
    caches["default"].set("request-cost-probe", 1, timeout=5)
    assert caches["default"].get("request-cost-probe") == 1
