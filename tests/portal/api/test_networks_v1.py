"""/api/v1/tenants/<slug>/networks/: the tenant's networks, read-only, scoped like every endpoint."""

import pytest

from portal.models import Network
from portal.services.networks import network_ensure
from tenants.choices import TenantRole

pytestmark = pytest.mark.django_db


def test_members_read_their_networks_and_other_tenants_get_404(tenant, other_tenant, member_of, client_for):
    network_ensure(tenant=tenant, name="default")
    backend = network_ensure(tenant=tenant, name="backend")
    network_ensure(tenant=other_tenant, name="secret")
    viewer = client_for(member_of(tenant, TenantRole.VIEWER))
    base = f"/api/v1/tenants/{tenant.slug}/networks/"

    listed = viewer.get(base).json()["results"]
    detail = viewer.get(f"{base}{backend.pk}/").json()
    intruder = client_for(member_of(other_tenant, TenantRole.OWNER))

    assert [(n["name"], n["subnet"], n["addresses_in_use"]) for n in listed] == [
        ("backend", "10.2.0.0/24", 0),
        ("default", "10.1.0.0/24", 0),
    ]
    assert (detail["name"], detail["id"]) == ("backend", str(backend.pk))
    assert intruder.get(base).status_code == 404
    assert intruder.get(f"{base}{backend.pk}/").status_code == 404
    assert intruder.get(f"/api/v1/tenants/{other_tenant.slug}/networks/{backend.pk}/").status_code == 404
    owner = client_for(member_of(tenant, TenantRole.OWNER))
    assert owner.post(base, {"name": "x"}, format="json").status_code == 405  # made on first use only
    assert Network.objects.filter(tenant=tenant).count() == 2
