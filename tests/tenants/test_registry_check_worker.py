"""A real Celery worker process takes the registry check through Redis, talks to a real
docker-registry on 127.0.0.1, and its result reaches PostgreSQL."""

import time

import pytest

from tenants.choices import TenantRole
from tenants.models import ImageRegistry
from tenants.services import registry_create
from tenants.tasks import check_registry

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
RESULT_TIMEOUT_S = 30


def wait_for_check(registry_id: int) -> ImageRegistry:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while time.monotonic() < deadline:
        registry = ImageRegistry.objects.get(pk=registry_id)
        if registry.last_checked_at is not None:
            return registry
        time.sleep(0.2)
    raise AssertionError("the worker did not record a result in time")


@pytest.fixture
def owner_access(tenant, member_of):
    from tenants.access import tenant_access_resolve

    return tenant_access_resolve(user=member_of(tenant, TenantRole.OWNER), slug=tenant.slug)


def test_worker_checks_a_registry_with_good_and_bad_credentials(live_stack, registry, owner_access):
    url = f"http://{registry.host_port}"
    good = registry_create(
        access=owner_access, name="good", url=url, username=registry.username, password=registry.password, insecure=True
    )
    bad = registry_create(
        access=owner_access, name="bad", url=url, username=registry.username, password="not-the-password", insecure=True
    )
    for registry_row in (good, bad):
        check_registry.apply_async(args=[registry_row.pk], queue=live_stack.queue)

    good, bad = wait_for_check(good.pk), wait_for_check(bad.pk)
    assert (good.last_check_ok, good.last_check_message) == (True, "Registry reachable; credentials accepted.")
    assert bad.last_check_ok is False and "refused the credentials" in bad.last_check_message
    worker_log = (live_stack.log_dir / "worker.log").read_text()
    assert "tenants.check_registry" in worker_log
    assert registry.password not in worker_log and "not-the-password" not in worker_log
