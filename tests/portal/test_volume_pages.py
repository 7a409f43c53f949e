"""Persistent volumes on the pages, with Django's test client: the deploy form and the JSON tab
accept them (errors and quota refusals at the volumes field, nothing created), the app page lists
each volume (size, used, host, instance, state), the tenant overview splits disk use by holder."""

import json
import re

import pytest

from portal.choices import InstanceStatus
from portal.models import App, ComputeHost, Volume
from portal.services.deployments import app_converge
from portal.services.instances import instance_transition
from tenants.choices import TenantRole
from tenants.models import Quota
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
IMAGE = "127.0.0.1:5000/demo/hello:latest"
FORM = {
    "app_id": "/db",
    "registry": "",
    "image": IMAGE,
    "cmd": "",
    "cpus": "0.5",
    "mem": "128",
    "instances": "2",
    "ports": "",
    "env": "",
    "volumes": "data:64\nlogs:32",
    "health_check": "",
    "health_path": "/",
}


@pytest.fixture
def developer(tenant, member_of):
    compute_host_create("host-p")
    return member_of(tenant, TenantRole.DEVELOPER)


def test_the_form_deploys_volumes_and_the_app_page_lists_each(tenant, developer, login):
    client = login(developer)

    response = client.post(f"/t/{tenant.slug}/apps/deploy/", FORM)

    app = App.objects.get(tenant=tenant, marathon_id="/db")
    assert response.status_code == 302
    assert app.current_version.definition["app"]["container"]["volumes"] == [
        {"container_path": "data", "mode": "RW", "persistent_size_mib": 64, "host_path": None},
        {"container_path": "logs", "mode": "RW", "persistent_size_mib": 32, "host_path": None},
    ]
    Volume.objects.filter(app=app, container_path="data").update(used_bytes=3 * 1024 * 1024)
    page = client.get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert page.count('data-volume="') == 4
    assert "/mnt/mesos/sandbox/data" in page and "/mnt/mesos/sandbox/logs" in page
    assert "64 MiB" in page and "3.0\xa0MB" in page and "host-p" in page
    for volume in Volume.objects.filter(app=app):
        assert str(volume.instance_id)[:8] in page


@pytest.mark.parametrize(
    ("volumes", "message"),
    [("data", "is not containerPath:size"), ("../up:10", "one relative name"), ("data:0", "")],
)
def test_bad_volumes_show_at_the_volumes_field_and_create_nothing(tenant, developer, login, volumes, message):
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"volumes": volumes})

    assert response.status_code == 422
    assert "volumes" in response.context["form"].errors
    assert message in " ".join(response.context["form"].errors["volumes"])
    assert not App.objects.exists()


def test_a_volume_over_the_disk_quota_is_an_error_at_the_volumes_field(tenant, developer, login):
    Quota.objects.filter(tenant=tenant).update(disk_mib=400)

    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM)

    assert response.status_code == 422
    assert "disk_mib" in " ".join(response.context["form"].errors["volumes"])
    assert (App.objects.count(), Volume.objects.count()) == (0, 0)


def test_the_json_tab_deploys_volumes(tenant, developer, login):
    body = {
        "id": "/json-db",
        "mem": 128,
        "container": {
            "docker": {"image": IMAGE},
            "volumes": [{"containerPath": "d", "mode": "RW", "persistent": {"size": 8}}],
        },
    }

    response = login(developer).post(
        f"/t/{tenant.slug}/apps/deploy/", {"mode": "json", "definition_json": json.dumps(body)}
    )

    assert response.status_code == 302
    assert Volume.objects.get().container_path == "d"


def test_the_overview_shows_disk_use_by_holder_against_the_quota(tenant, developer, login):
    login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM)

    page = login(developer).get(f"/t/{tenant.slug}/").content.decode()

    assert '<span data-disk="persistent volumes">192 MiB persistent volumes</span>' in page
    assert 'data-disk="writable layers"' in page
    assert 'data-resource="disk_mib"' in page


def test_an_instance_waiting_for_its_volumes_host_says_so_on_the_app_page(tenant, developer, login):
    client = login(developer)
    client.post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"instances": "1"})
    app = App.objects.get(tenant=tenant, marathon_id="/db")
    (instance,) = app.instances.all()
    ComputeHost.objects.filter(name="host-p").update(state="down")
    instance_transition(instance_id=instance.pk, to=InstanceStatus.LOST, failure_reason="host stopped heartbeating")
    app_converge(app_id=app.pk)

    page = client.get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()

    waiting = app.instances.get(status=InstanceStatus.STAGED)
    row = re.search(rf'<tr data-instance="{waiting.pk}".*?</tr>', page, re.S).group(0)
    assert "Waiting for host host-p, which holds the instance&#x27;s volumes: it is down" in row
    assert 'value="kill"' in row  # a live row, though an ended instance is listed below it
