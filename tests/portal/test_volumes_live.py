"""Persistent volumes through the whole stack (web, Celery workers, a host worker, real VMs):
an app keeps a counter on its volume and serves it over HTTP. A restart, a rolling upgrade to a
changed definition and, after a host worker restart, a scale 0 -> 1 each relaunch it on the same
volume (the counter grows);
wipe=true gives the replacement a fresh volume (the counter starts over); deleting the app leaves
no volume file, no pool entry and no quota usage; another tenant's app counts on its own volume."""

from __future__ import annotations

import urllib.request

import pytest
from django.db import close_old_connections

from portal.choices import INSTANCE_ACTIVE, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, Instance, Volume
from portal.services.apps import app_create, app_delete, app_restart, app_scale, app_update
from tenants.selectors import quota_usage
from tests.portal.test_pipeline import access, marathon, wait_until  # noqa: F401 (fixtures)
from tests.support.tenant_access import owner_access_with_registry
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
COUNTER_SERVE = (
    'f="$MESOS_SANDBOX/data/index.html"; n=$(cat "$f" 2>/dev/null || echo 0); n=$((n+1)); '
    'echo "$n" > "$f" && exec /bin/httpd -f -p 8080 -h "$MESOS_SANDBOX/data"'
)


def counter_app(test_images, app_id: str = "/counter", **extra) -> dict:
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "cmd": COUNTER_SERVE,
        "container": {
            "docker": {"image": test_images["httpd"].reference},
            "portMappings": [{"containerPort": 8080, "hostPort": 0}],
            "volumes": [{"containerPath": "data", "mode": "RW", "persistent": {"size": 32}}],
        },
        "networks": [{"mode": "container/bridge"}],
        **extra,
    }


def served(instance: Instance) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{instance.host_ports[0]}/", timeout=3) as response:
            return response.read().decode().strip()
    except OSError:
        return None


def counter_after(app: App, *, not_instance=None) -> str:
    """The counter the app's one running instance serves (a new one, when ``not_instance``)."""

    def read():
        close_old_connections()
        running = Instance.objects.filter(app=app, status=InstanceStatus.RUNNING).exclude(
            pk=getattr(not_instance, "pk", None)
        )
        instance = running.first()
        return instance is not None and (value := served(instance)) is not None and (instance, value)

    return wait_until("the counter served", read, 180)


def test_a_volume_keeps_its_counter_across_relaunches_until_wiped_and_leaves_nothing_when_deleted(
    access,  # noqa: F811 (the fixture imported above)
    one_host,  # noqa: F811
    marathon,  # noqa: F811
    compute_hosts,
    test_images,
    other_tenant,
    member_of,
    registry,
):
    app = app_create(access=access, definition=parse_app_definition(counter_app(test_images))).app
    first, value = counter_after(app)
    assert value == "1"
    (volume,) = Volume.objects.filter(app=app)

    app_restart(access=access, app=app, force=True)
    second, value = counter_after(app, not_instance=first)
    assert value == "2"

    changed = parse_app_definition(counter_app(test_images, env={"VERSION": "2"}))
    app_update(access=access, app=app, definition=changed, force=True)  # a rolling upgrade
    third, value = counter_after(app, not_instance=second)
    assert value == "3"

    one_host.stop()  # the host worker restarts on the same state dir; the VM and its volume stay
    compute_hosts.restart("h1")
    assert served(third) == "3"

    app_scale(access=access, app=app, instances=0, force=True)
    wait_until("scaled to 0", lambda: not Instance.objects.filter(app=app, status__in=INSTANCE_ACTIVE).exists())
    assert Volume.objects.get(pk=volume.pk).instance_id == third.pk  # kept, reserved
    app_scale(access=access, app=app, instances=1, force=True)
    fourth, value = counter_after(app, not_instance=third)
    assert value == "4"
    assert {i.host_id for i in (first, second, third, fourth)} == {volume.host_id}
    (task,) = marathon.list_tasks("/counter")
    assert task.local_volumes == [{"containerPath": "data", "persistenceId": f"counter#data#{volume.pk}"}]

    outsider = owner_access_with_registry(other_tenant, member_of, registry)
    theirs = app_create(access=outsider, definition=parse_app_definition(counter_app(test_images))).app
    _, value = counter_after(theirs)
    assert value == "1"  # same app id, another tenant: its own volume

    marathon.kill_task("/counter", fourth.task_id, wipe=True)
    _, value = counter_after(app, not_instance=fourth)
    assert value == "1"
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    pool = volume.pool_name
    wait_until("the wiped volume gone", lambda: volume.volume_name not in runtime.host.list_volumes(pool), 60)

    names = set(Volume.objects.filter(app__in=[app, theirs]).values_list("id", flat=True))
    app_delete(access=access, app=app, force=True)
    app_delete(access=outsider, app=theirs, force=True)
    wait_until("apps and volumes gone", lambda: not Volume.objects.filter(id__in=names).exists(), 120)
    assert not any(name.startswith("hvvol-") for name in runtime.host.list_volumes(pool))
    assert not [path for path in (one_host.state_dir / "volumes").iterdir() if path.name.startswith("hvvol-")]
    for tenant in (access.tenant, outsider.tenant):
        usage = quota_usage(tenant=tenant)
        assert (usage["volumes"], usage["disk_mib"]) == (0, 0)
