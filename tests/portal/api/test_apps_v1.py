"""The native /api/v1 deploy endpoints: Marathon bodies, 422 details, tenant scoping, roles."""

import pytest

from portal.models import App, AppVersion, Deployment, Instance
from tenants.choices import TenantRole
from tenants.models import ResourceClaim

pytestmark = pytest.mark.django_db

BODY = {
    "id": "/shop/web",
    "instances": 2,
    "cpus": 0.5,
    "mem": 128,
    "container": {"docker": {"image": "127.0.0.1:5000/demo/hello:latest"}},
}


def test_create_list_scale_and_delete(tenant, member_of, client_for):
    client = client_for(member_of(tenant, TenantRole.DEVELOPER))
    base = f"/api/v1/tenants/{tenant.slug}/apps/"
    created = client.post(base, BODY, format="json")
    assert created.status_code == 201 and created.json()["kind"] == "start"
    assert Instance.objects.filter(app__tenant=tenant).count() == 2  # admitted: staged, claims taken
    assert ResourceClaim.objects.filter(tenant=tenant, owner_kind="instance").count() == 2
    listing = client.get(base).json()["results"]
    assert [app["marathon_id"] for app in listing] == ["/shop/web"]
    app_id = listing[0]["id"]
    assert listing[0]["definition"]["container"]["docker"]["image"] == BODY["container"]["docker"]["image"]

    Deployment.objects.update(status="succeeded")  # no compute host here: let the start count as done
    scaled = client.post(f"{base}{app_id}/scale/", {"instances": 3}, format="json")
    assert scaled.status_code == 202 and scaled.json()["kind"] == "scale"
    assert AppVersion.objects.filter(app_id=app_id).count() == 2
    assert len(client.get(f"{base}{app_id}/versions/").json()["results"]) == 2
    assert client.get(f"/api/v1/tenants/{tenant.slug}/deployments/?status=running").json()["count"] == 1

    locked = client.put(f"{base}{app_id}/", {"env": {"A": "b"}}, format="json")
    assert locked.status_code == 409
    forced = client.put(f"{base}{app_id}/?force=true", {"env": {"A": "b"}}, format="json")
    assert forced.status_code == 202 and forced.json()["kind"] == "restart"

    assert client.delete(f"{base}{app_id}/?force=true").status_code == 202
    assert client.get(f"{base}{app_id}/").status_code == 404  # gone from the API at once
    assert App.objects.get(pk=app_id).deleting


def test_bad_definitions_are_422_with_paths_and_store_nothing(tenant, member_of, client_for):
    client = client_for(member_of(tenant, TenantRole.DEVELOPER))
    response = client.post(
        f"/api/v1/tenants/{tenant.slug}/apps/",
        {"id": "/Bad_Id", "cpus": -1, "instances": "two", "fetch": [{"uri": "x"}]},
        format="json",
    )
    assert response.status_code == 422
    paths = {detail["path"] for detail in response.json()["details"]}
    assert {"/id", "/cpus", "/instances", "/fetch"} <= paths
    assert not App.objects.exists() and not Instance.objects.exists()


def test_over_quota_names_the_quota_and_creates_nothing(tenant, member_of, client_for):
    tenant.quota.instances = 1
    tenant.quota.save()
    client = client_for(member_of(tenant, TenantRole.DEVELOPER))
    response = client.post(f"/api/v1/tenants/{tenant.slug}/apps/", BODY, format="json")
    assert response.status_code == 403 and response.json()["quota"]["resource"] == "instances"
    assert not App.objects.exists() and not ResourceClaim.objects.exists()


def test_viewers_read_and_other_tenants_see_nothing(tenant, other_tenant, member_of, client_for):
    developer = client_for(member_of(tenant, TenantRole.DEVELOPER))
    developer.post(f"/api/v1/tenants/{tenant.slug}/apps/", BODY, format="json")
    app = App.objects.get()
    instance = Instance.objects.first()
    viewer = client_for(member_of(tenant, TenantRole.VIEWER))
    assert viewer.get(f"/api/v1/tenants/{tenant.slug}/apps/{app.pk}/").status_code == 200
    assert viewer.post(f"/api/v1/tenants/{tenant.slug}/apps/", BODY | {"id": "/x"}, format="json").status_code == 403

    intruder = client_for(member_of(other_tenant, TenantRole.OWNER))
    t = tenant.slug
    for method, path in [
        ("get", f"/api/v1/tenants/{t}/apps/"),
        ("get", f"/api/v1/tenants/{t}/apps/{app.pk}/"),
        ("delete", f"/api/v1/tenants/{t}/apps/{app.pk}/"),
        ("post", f"/api/v1/tenants/{t}/apps/{app.pk}/scale/"),
        ("get", f"/api/v1/tenants/{t}/instances/{instance.pk}/"),
        ("get", f"/api/v1/tenants/{t}/deployments/"),
    ]:
        assert getattr(intruder, method)(path, {"instances": 0}, format="json").status_code == 404, path
    own = other_tenant.slug
    assert intruder.get(f"/api/v1/tenants/{own}/apps/{app.pk}/").status_code == 404
    assert intruder.get(f"/api/v1/tenants/{own}/instances/{instance.pk}/").status_code == 404
    assert intruder.get(f"/api/v1/tenants/{own}/instances/").json()["count"] == 0
    assert not App.objects.get(pk=app.pk).deleting


def test_the_app_list_reads_as_many_rows_for_six_apps_as_for_two(tenant, member_of, client_for):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(member_of(tenant, TenantRole.DEVELOPER))
    base = f"/api/v1/tenants/{tenant.slug}/apps/"
    for index in range(6):
        if index == 2:
            client.get(base)  # warm (sessions, the first access check)
            with CaptureQueriesContext(connection) as two:
                listing_two = client.get(base).json()["results"]
        client.post(base, BODY | {"id": f"/a{index}", "instances": index % 2}, format="json")
    with CaptureQueriesContext(connection) as six:
        listing = client.get(base).json()["results"]
    assert len(listing_two) == 2 and len(listing) == 6
    assert len(six) == len(two)
    assert {app["marathon_id"]: app["counts"]["staged"] for app in listing} == {f"/a{i}": i % 2 for i in range(6)}
