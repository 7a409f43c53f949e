"""Two deploys racing over HTTP for the tenant's last instance slot: exactly one wins, and the
loser leaves nothing behind (real web server, real PostgreSQL connections in parallel)."""

import threading

import pytest
import requests

from portal.models import App, Instance
from tenants import services as tenant_services
from tenants.choices import TenantRole
from tenants.models import Quota, ResourceClaim

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def app_body(app_id: str) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "container": {"docker": {"image": "127.0.0.1:5000/demo/hello:latest"}},
    }


@pytest.mark.parametrize("attempt", range(3))
def test_two_concurrent_deploys_for_the_last_slot_exactly_one_wins(live_stack, tenant, member_of, attempt):
    Quota.objects.filter(tenant=tenant).update(instances=1)
    _, key = tenant_services.api_token_create(user=member_of(tenant, TenantRole.DEVELOPER), name="t", tenant=tenant)
    barrier = threading.Barrier(2, timeout=10)
    answers: dict[str, requests.Response] = {}

    def deploy(app_id: str) -> None:
        barrier.wait()
        answers[app_id] = requests.post(
            f"{live_stack.url}/v2/apps", json=app_body(app_id), headers={"Authorization": f"Token {key}"}, timeout=30
        )

    threads = [threading.Thread(target=deploy, args=(app_id,)) for app_id in ("/left", "/right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(response.status_code for response in answers.values())
    assert statuses == [201, 403], {k: (r.status_code, r.text) for k, r in answers.items()}
    loser = next(app_id for app_id, response in answers.items() if response.status_code == 403)
    assert "instances" in answers[loser].json()["message"]
    assert not App.objects.filter(marathon_id=loser).exists()
    assert Instance.objects.count() == 1 and ResourceClaim.objects.filter(owner_kind="instance").count() == 1
