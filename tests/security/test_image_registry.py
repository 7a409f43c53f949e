"""Issue 9: an image reference is a way for a tenant to make a compute host connect somewhere (its
pull). ``127.0.0.1:6390/x`` would make the host talk to the platform's Redis, ``169.254.169.254/x``
to a cloud's metadata service. The image's registry passes the rule a tenant registry passes
(vmworker.registry_address): never a loopback, private, link-local, multicast or unspecified
address unless the platform runs or vouches for it (its embedded registry, the allowlist).

The refusal at the API is shown against the live portal with a tenant's token; the host-side
check (a stored definition, or a name that resolves elsewhere by the time the host pulls) is
shown by running the host's boot task on a row that names a loopback registry: the instance
fails with the reason and a listening socket on that port sees no connection."""

import dataclasses
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, Instance
from portal.selectors import app_definition
from portal.services import apps as app_services
from portal.services.host_reports import instance_report_apply
from portal.services.instance_specs import instance_spec_build
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.errors import InvalidInput
from tenants.services import api_token_create
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import MembershipFactory
from vmworker import tasks

PLATFORM_ADDRESSES = [
    "127.0.0.1:6390/redis/peek:latest",
    "localhost:5432/postgres/peek:latest",
    "[::1]:8000/portal/peek:latest",
    "169.254.169.254/latest/meta-data:latest",
    "10.0.0.1:5000/internal/app:1",
    "0.0.0.0:5000/any/app:1",
]


def post_app(url: str, token: str, definition: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v2/apps", data=json.dumps(definition).encode(), method="POST")
    request.add_header("Authorization", f"Token {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def app_json(app_id: str, image: str) -> dict:
    return {"id": app_id, "cmd": "sleep 3600", "cpus": 0.1, "mem": 64, "container": {"docker": {"image": image}}}


@pytest.fixture
def developer_token(live_stack, tenant, member_of) -> str:
    _, key = api_token_create(user=member_of(tenant, TenantRole.DEVELOPER), name="images", tenant=tenant)
    return key


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("image", PLATFORM_ADDRESSES)
def test_an_image_on_a_platform_address_is_refused_422_and_nothing_stored(live_stack, developer_token, image):
    status, answer = post_app(live_stack.url, developer_token, app_json("/peek", image))

    assert status == 422, answer
    assert answer["details"][0]["path"] == "/container/docker/image", answer
    assert "not one the platform pulls from" in answer["message"] + json.dumps(answer["details"]), answer
    assert not App.objects.filter(marathon_id="/peek").exists()


@pytest.mark.django_db(transaction=True)
def test_an_image_on_the_platforms_own_registry_is_accepted(live_stack, developer_token, registry):
    # The test registry listens on 127.0.0.1 and is allowlisted, as the embedded one is.
    status, answer = post_app(live_stack.url, developer_token, app_json("/ours", f"{registry.host_port}/demo/a:1"))

    assert status == 201, answer


@pytest.fixture
def loopback_listener():
    """A loopback port of "the platform": records every connection that reaches it."""
    reached: list[tuple] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, address = server.accept()
            except TimeoutError:
                continue
            reached.append(address)
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], reached
    stopping.set()
    thread.join(timeout=5)
    server.close()


@pytest.mark.django_db
def test_the_host_refuses_to_pull_from_a_platform_address_a_stored_row_names(tenant, loopback_listener, monkeypatch):
    port, reached = loopback_listener
    monkeypatch.setenv("HYPERVM_HOST_NAME", "registry-check-host")
    compute_host_create("registry-check-host", memory_mib=8192)
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    app = app_services.app_create(access=access, definition=parse_app_definition(app_json("/old", "demo/h:1"))).app
    instance = Instance.objects.get(app=app)
    # A row stored before the rule (or a name that now resolves to loopback) names the platform's port.
    version = AppVersion.objects.get(pk=instance.version_id)
    version.definition["app"]["container"]["docker"]["image"] = f"127.0.0.1:{port}/steal/it:1"
    version.save(update_fields=["definition"])

    # The host's reports go to the portal's queue; here the portal applies them at once.
    monkeypatch.setattr(tasks, "send_report", lambda report: instance_report_apply(report=report))

    tasks.boot_instance(str(instance.pk), instance_spec_build(Instance.objects.get(pk=instance.pk)))

    instance.refresh_from_db()
    assert instance.status == InstanceStatus.FAILED
    assert f"the image's registry 127.0.0.1:{port} is not one the platform pulls from" in instance.failure_reason
    assert reached == [], "the host connected to the platform's loopback port"


@pytest.mark.django_db
def test_an_app_whose_registry_is_no_longer_allowed_can_scale_down_but_not_up(tenant, settings):
    compute_host_create("registry-scale-host", memory_mib=8192)
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    definition = parse_app_definition({**app_json("/was-allowed", "127.0.0.1:5000/demo/a:1"), "instances": 2})
    app = app_services.app_create(access=access, definition=definition).app
    settings.REGISTRY_HOST_ALLOWLIST = []  # the platform stops vouching for that registry

    with pytest.raises(InvalidInput) as raised:
        app_services.app_update(access=access, app=app, definition=dataclasses.replace(definition, instances=3))
    app_services.app_update(access=access, app=app, definition=dataclasses.replace(definition, instances=0), force=True)

    assert raised.value.field == "/container/docker/image"
    assert app_definition(App.objects.get(pk=app.pk)).instances == 0
