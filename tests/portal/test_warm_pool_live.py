"""Fast start through the whole stack (issue 11): a host worker keeps a pool of paused blank VMs;
two tenants' apps deployed at once start warm, each in a VM of its own taken from that pool,
serve their pages, say ``warm`` in their /v2 task, and the pool refills with new VMs after the
burst. Deleting the apps leaves only the pool."""

from __future__ import annotations

import json
import urllib.request

import pytest
from django.db import close_old_connections

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import ComputeHost, Instance
from portal.services.apps import app_create, app_delete
from tenants.demo_image import HTTPD_INDEX_HTML
from tenants.services import api_token_create
from tests.portal.test_pipeline import access, http_app, wait_until  # noqa: F401 (fixtures)
from tests.support.tenant_access import owner_access_with_registry
from vmworker import warm_pool
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
POOL = 2


def page(instance: Instance) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{instance.host_ports[0]}/", timeout=3) as response:
            return response.read().decode()
    except OSError:
        return None


def v2_tasks(live_stack, access_, app_id: str) -> list[dict]:
    _, key = api_token_create(user=access_.actor, name="warm-pool", tenant=access_.tenant)
    request = urllib.request.Request(
        f"{live_stack.url}/v2/apps{app_id}/tasks?embed=tasks.startKind", headers={"Authorization": f"Token {key}"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read())["tasks"]


def test_a_pooled_host_starts_two_tenants_apps_warm_in_vms_of_their_own_and_refills(
    access,  # noqa: F811 (the fixture imported above)
    compute_hosts,
    live_stack,
    test_images,
    other_tenant,
    member_of,
    registry,
):
    compute_hosts.kill_all_but()
    worker = compute_hosts.start("warm", warm_pool=f"1x128:{POOL}")
    try:
        wait_until("the host registered", lambda: ComputeHost.objects.filter(name=worker.name).exists(), 60)
        ComputeHost.objects.exclude(name=worker.name).update(state="down")
        runtime = HyperVMRuntime(RuntimeSettings(state_dir=worker.state_dir))
        wait_until("the pool full", lambda: len(warm_pool.ready_vms(runtime)) == POOL, 240)
        blank = {f"hvm-{pool_id}" for pool_id in warm_pool.ready_vms(runtime)}

        outsider = owner_access_with_registry(other_tenant, member_of, registry)
        accesses = (access, outsider)
        apps = [
            app_create(access=a, definition=parse_app_definition(http_app(test_images, instances=1))).app
            for a in accesses
        ]

        def both_serving():
            close_old_connections()
            # Running, or healthy already (the HTTP check passes a second after the start).
            up = (InstanceStatus.RUNNING, InstanceStatus.HEALTHY)
            running = [Instance.objects.filter(app=app, status__in=up).first() for app in apps]
            return all(i is not None and page(i) == HTTPD_INDEX_HTML for i in running) and running

        instances = wait_until("both apps serving", both_serving, 180)
        assert [instance.start_kind for instance in instances] == ["warm", "warm"]
        domains = [runtime.host.lookup(str(instance.id)).name for instance in instances]
        assert len(set(domains)) == 2 and set(domains) <= blank, (domains, blank)
        for a, instance in zip(accesses, instances, strict=True):
            (task,) = v2_tasks(live_stack, a, "/web")
            assert (task["id"], task["startKind"]) == (instance.task_id, "warm")

        # The burst took the whole pool: it refills with new blank VMs.
        wait_until(
            "the pool refilled",
            lambda: len(ready := warm_pool.ready_vms(runtime)) == POOL and not {f"hvm-{p}" for p in ready} & blank,
            240,
        )
        for a, app in zip(accesses, apps, strict=True):
            app_delete(access=a, app=app, force=True)
        wait_until("the apps' VMs gone", lambda: not any(runtime.host.lookup(str(i.id)) for i in instances), 120)
        assert runtime.live_instance_ids() == set()  # records of ended instances stay until pruned
        assert len(warm_pool.ready_vms(runtime)) == POOL
    finally:
        compute_hosts.kill_machine("warm")
        ComputeHost.objects.filter(name=worker.name).update(state="down")
