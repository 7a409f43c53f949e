"""/api/v1/tenants/<slug>/volumes/: the tenant's persistent volumes, read-only, scoped like every
endpoint (another tenant gets 404 and sees nothing)."""

import pytest

from portal.marathon import parse_app_definition
from portal.models import Volume
from portal.services.apps import app_create
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db


def deploy(tenant, user, app_id: str, instances: int) -> None:
    body = {
        "id": app_id,
        "instances": instances,
        "mem": 128,
        "container": {
            "docker": {"image": "demo/h:1"},
            "volumes": [{"containerPath": "data", "mode": "RW", "persistent": {"size": 16}}],
        },
    }
    app_create(access=tenant_access_resolve(user=user, slug=tenant.slug), definition=parse_app_definition(body))


def test_members_read_their_volumes_and_other_tenants_get_404(tenant, other_tenant, member_of, client_for):
    compute_host_create("host-api")
    deploy(tenant, member_of(tenant, TenantRole.DEVELOPER), "/db", 2)
    intruder_user = member_of(other_tenant, TenantRole.OWNER)
    deploy(other_tenant, intruder_user, "/theirs", 1)
    viewer = client_for(member_of(tenant, TenantRole.VIEWER))
    base = f"/api/v1/tenants/{tenant.slug}/volumes/"
    mine = Volume.objects.filter(tenant=tenant).order_by("slot").first()

    listed = viewer.get(base).json()["results"]
    detail = viewer.get(f"{base}{mine.pk}/").json()
    intruder = client_for(intruder_user)

    assert [(v["app"], v["slot"], v["container_path"], v["size_mib"], v["host"], v["state"]) for v in listed] == [
        ("/db", 0, "data", 16, "host-api", "reserved"),
        ("/db", 1, "data", 16, "host-api", "reserved"),
    ]
    assert (detail["id"], detail["instance"], detail["persistence_id"]) == (
        str(mine.pk),
        str(mine.instance_id),
        f"db#data#{mine.pk}",
    )
    assert intruder.get(base).status_code == 404
    assert intruder.get(f"/api/v1/tenants/{other_tenant.slug}/volumes/{mine.pk}/").status_code == 404
    assert [v["app"] for v in intruder.get(f"/api/v1/tenants/{other_tenant.slug}/volumes/").json()["results"]] == [
        "/theirs"
    ]
    owner = client_for(member_of(tenant, TenantRole.OWNER))
    assert owner.delete(f"{base}{mine.pk}/").status_code == 405  # destroyed by wipe or app deletion only
