"""The platform's embedded registry: offered to every tenant's Deploy form, used by the worker's
credential lookup when the tenant has no registry of its own for that host, its password read
from its 0600 file only there (never on a page)."""

import os
import re

import pytest

from portal.marathon import parse_app_definition
from portal.models import App, Instance
from portal.services.apps import app_create
from portal.services.instance_specs import pull_credentials
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.embedded_registry import EMBEDDED_REGISTRY_KEY, EmbeddedRegistry
from tenants.models import ImageRegistry
from tenants.selectors import registry_for_image

pytestmark = pytest.mark.django_db
HOST = "127.0.0.1:5999"
PASSWORD = "embedded-Pa55-never-shown"
IMAGE = f"{HOST}/demo/hello:latest"


@pytest.fixture
def embedded(settings, tmp_path):
    password_file = tmp_path / "password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{PASSWORD}\n".encode())
    os.close(fd)
    settings.EMBEDDED_REGISTRY_URL = f"http://{HOST}"
    settings.EMBEDDED_REGISTRY_USERNAME = "demo"
    settings.EMBEDDED_REGISTRY_PASSWORD_FILE = str(password_file)


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


def test_a_tenant_without_registries_gets_the_embedded_one_for_its_host_only(tenant, embedded):
    found = registry_for_image(tenant=tenant, image=IMAGE)
    assert isinstance(found, EmbeddedRegistry) and found.host == HOST and found.insecure
    assert found.pull_password() == PASSWORD
    assert registry_for_image(tenant=tenant, image="registry.example.com/demo/hello:latest") is None
    assert registry_for_image(tenant=tenant, image="hello:latest") is None


def test_the_tenants_own_registry_for_that_host_wins(tenant, embedded):
    own = ImageRegistry.objects.create(tenant=tenant, name="mine", url=f"http://{HOST}", username="me", insecure=True)
    assert registry_for_image(tenant=tenant, image=IMAGE) == own


def test_no_embedded_registry_configured_means_no_fallback(tenant, settings):
    settings.EMBEDDED_REGISTRY_URL = ""
    assert registry_for_image(tenant=tenant, image=IMAGE) is None


def test_the_worker_reads_the_embedded_credentials_for_any_tenant(tenant, developer, embedded):
    definition = parse_app_definition({"id": "/web", "instances": 1, "container": {"docker": {"image": IMAGE}}})
    app_create(access=tenant_access_resolve(user=developer, slug=tenant.slug), definition=definition)
    instance = Instance.objects.get(app__marathon_id="/web")
    assert pull_credentials(instance, IMAGE) == ({"username": "demo", "password": PASSWORD}, False)
    assert pull_credentials(instance, "registry.example.com/x:1") == (None, True)


def test_deploy_form_offers_it_and_prefixes_the_image(tenant, developer, embedded, login):
    client = login(developer)
    page = client.get(f"/t/{tenant.slug}/apps/deploy/").content.decode()
    # The label stays short; the option's hint (shown under the Image field) names the host.
    assert re.search(rf'<option value="{EMBEDDED_REGISTRY_KEY}"[^>]*>local \(platform registry\)</option>', page)
    assert re.search(
        rf'<option value="{EMBEDDED_REGISTRY_KEY}"[^>]*data-hint="[^"]*{re.escape(HOST)}, the platform', page
    )
    assert PASSWORD not in page
    assert IMAGE in client.get(f"/t/{tenant.slug}/apps/deploy/?mode=json").content.decode()  # the example
    form = {
        "app_id": "/hello",
        "registry": EMBEDDED_REGISTRY_KEY,
        "image": "demo/hello:latest",
        "cpus": "0.5",
        "mem": "128",
        "instances": "1",
    }
    response = client.post(f"/t/{tenant.slug}/apps/deploy/", form)
    assert response.status_code == 302
    assert App.objects.get(tenant=tenant).current_version.definition["app"]["container"]["docker"]["image"] == IMAGE


def test_empty_app_list_and_registries_page_point_to_it(tenant, developer, member_of, embedded, login):
    apps = login(developer).get(f"/t/{tenant.slug}/apps/").content.decode()
    assert f"registry={EMBEDDED_REGISTRY_KEY}" in apps and "Deploy the demo image" in apps
    registries = login(member_of(tenant, TenantRole.ADMIN)).get(f"/t/{tenant.slug}/registries/").content.decode()
    assert 'id="platform-registry"' in registries and HOST in registries and PASSWORD not in registries


def test_a_tenant_registry_for_the_same_host_hides_the_embedded_choice(tenant, developer, embedded, login):
    own = ImageRegistry.objects.create(tenant=tenant, name="local", url=f"http://{HOST}", insecure=True)
    page = login(developer).get(f"/t/{tenant.slug}/apps/deploy/").content.decode()
    assert re.search(rf'<option value="{own.pk}"[^>]*>local \({re.escape(HOST)}\)</option>', page)
    assert f'value="{EMBEDDED_REGISTRY_KEY}"' not in page
