"""Persistent volumes through /v2 (API-NOTES §5.4): accepted in their supported form, hostPath
and external refused with a 422 at the field, a 403 naming the quota, ``localVolumes`` in tasks,
and ``wipe=true`` destroying a task's volume."""

import json

import pytest

from portal.choices import VolumeState
from portal.models import App, Volume
from tenants.models import Quota, ResourceClaim
from tests.support.portal_fixtures import compute_host_create

from .conftest import app_json
from .shapes import marathon_error

pytestmark = pytest.mark.django_db
VOLUMES = [{"containerPath": "data", "mode": "RW", "persistent": {"size": 64}}]


def post(api, body):
    return api.post("/v2/apps", json.dumps(body), content_type="application/json")


def resident(**fields) -> dict:
    return app_json(
        "/db", container={"type": "DOCKER", "docker": {"image": "demo/hello:latest"}, "volumes": VOLUMES}, **fields
    )


@pytest.fixture(autouse=True)
def host(db):
    return compute_host_create("host-a")


def test_a_resident_app_is_created_and_its_tasks_list_their_local_volumes(api):
    response = post(api, resident())

    assert response.status_code == 201, response.content
    assert response.json()["container"]["volumes"] == VOLUMES
    assert response.json()["upgradeStrategy"] == {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0}
    (task,) = api.get("/v2/apps/db/tasks").json()["tasks"]
    volume = Volume.objects.get()
    assert task["localVolumes"] == [{"containerPath": "data", "persistenceId": f"db#data#{volume.pk}"}]


@pytest.mark.parametrize(
    ("volume", "path"),
    [
        ({"containerPath": "/data", "hostPath": "/etc", "mode": "RW"}, "/container/volumes(0)/hostPath"),
        (
            {"containerPath": "d", "external": {"name": "v", "provider": "dvdi"}, "mode": "RW"},
            "/container/volumes(0)/external",
        ),
        ({"containerPath": "../x", "persistent": {"size": 1}}, "/container/volumes(0)/containerPath"),
        ({"containerPath": "d", "persistent": {"size": 0}}, "/container/volumes(0)/persistent/size"),
    ],
)
def test_unsupported_volumes_are_a_422_at_the_field_and_nothing_is_stored(api, volume, path):
    body = app_json("/db", container={"type": "DOCKER", "docker": {"image": "demo/hello:latest"}, "volumes": [volume]})

    error = marathon_error(post(api, body), 422)

    assert path in {detail["path"] for detail in error["details"]}
    assert (App.objects.count(), Volume.objects.count()) == (0, 0)


def test_a_volume_over_the_disk_quota_is_a_403_naming_it(api, tenant):
    Quota.objects.filter(tenant=tenant).update(disk_mib=300)

    response = post(api, resident())

    assert response.status_code == 403, response.content
    assert "disk_mib" in response.json()["message"]
    assert (App.objects.count(), Volume.objects.count(), ResourceClaim.objects.count()) == (0, 0, 0)


def test_wipe_marks_the_tasks_volume_for_destruction(api):
    post(api, resident())
    (task,) = api.get("/v2/apps/db/tasks").json()["tasks"]

    response = api.delete(f"/v2/apps/db/tasks/{task['id']}?wipe=true")

    assert response.status_code == 200, response.content
    assert Volume.objects.get().state == VolumeState.DESTROYING


def test_another_tenant_cannot_wipe_a_task(api, intruder_api):
    post(api, resident())
    (task,) = api.get("/v2/apps/db/tasks").json()["tasks"]

    assert intruder_api.delete(f"/v2/apps/db/tasks/{task['id']}?wipe=true").status_code == 404
    assert Volume.objects.get().state == VolumeState.RESERVED


@pytest.mark.parametrize("path", ["/v2/tasks", "/v2/apps/db/tasks", "/v2/apps?embed=apps.tasks"])
def test_listing_tasks_reads_their_volumes_in_one_query_whatever_their_number(api, path):
    """localVolumes come with the instances (one prefetch), not one query per task."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from portal.services.deployments import app_converge

    assert post(api, resident(instances=1)).status_code == 201
    with CaptureQueriesContext(connection) as one:
        assert api.get(path).status_code == 200
    app = App.objects.get()
    Quota.objects.filter(tenant=app.tenant).update(volumes=100, disk_mib=100_000, instances=100)
    scaled = api.put("/v2/apps/db?force=true", json.dumps(resident(instances=4)), content_type="application/json")
    assert scaled.status_code == 200, scaled.content
    app_converge(app_id=app.pk)  # what the deployment's commit would start
    assert Volume.objects.count() == 4
    with CaptureQueriesContext(connection) as four:
        body = api.get(path).json()

    tasks = body["tasks"] if "tasks" in body else body["apps"][0]["tasks"]
    assert len(tasks) == 4 and all(task["localVolumes"] for task in tasks)
    assert len(four.captured_queries) == len(one.captured_queries)
