"""The deploy pages with Django's test client: roles, tenant scoping, inline form errors
mapped from the Marathon parser's paths, nothing created on bad input."""

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.choices import DeploymentStatus, InstanceStatus, VirtType
from portal.forms import field_for_path
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, Deployment, Event, Instance
from portal.services.apps import app_create
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ImageRegistry, Quota
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db

IMAGE = "127.0.0.1:5000/demo/hello:latest"
FORM = {
    "app_id": "/hello",
    "registry": "",
    "image": IMAGE,
    "cmd": "",
    "cpus": "0.5",
    "mem": "128",
    "instances": "1",
    "ports": "8080",
    "env": "GREETING=hi",
    "health_check": "HTTP",
    "health_path": "/",
}


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


def deployed(tenant, user, app_id="/hello", instances=1) -> App:
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    definition = parse_app_definition(
        {"id": app_id, "instances": instances, "cpus": 0.5, "mem": 128, "container": {"docker": {"image": IMAGE}}}
    )
    return app_create(access=access, definition=definition).app


def test_the_form_builds_a_definition_and_deploys_it(tenant, developer, login):
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM)
    app = App.objects.get(tenant=tenant, marathon_id="/hello")
    assert response.status_code == 302 and response["Location"] == f"/t/{tenant.slug}/apps/{app.pk}/"
    stored = app.current_version.definition["app"]
    assert stored["container"]["docker"]["image"] == IMAGE
    assert stored["container"]["port_mappings"][0]["container_port"] == 8080
    assert stored["env"] == {"GREETING": "hi"}
    assert stored["health_checks"][0]["protocol"] == "HTTP"
    assert Instance.objects.filter(app=app).count() == 1


def test_a_registry_choice_prefixes_the_image(tenant, developer, login):
    registry = ImageRegistry.objects.create(tenant=tenant, name="local", url="http://127.0.0.1:5000", insecure=True)
    login(developer).post(
        f"/t/{tenant.slug}/apps/deploy/", FORM | {"registry": str(registry.pk), "image": "demo/hello:latest"}
    )
    assert App.objects.get().current_version.definition["app"]["container"]["docker"]["image"] == IMAGE
    login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"registry": str(registry.pk), "app_id": "/full"})
    assert (
        App.objects.get(marathon_id="/full").current_version.definition["app"]["container"]["docker"]["image"] == IMAGE
    )


def test_parser_errors_show_at_their_form_fields_and_create_nothing(tenant, developer, login):
    bad = FORM | {"app_id": "/Bad_Id", "cpus": "-1", "instances": "-2", "ports": "99999", "env": "=a"}
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", bad)
    assert response.status_code == 422
    form = response.context["form"]
    assert {"app_id", "cpus", "instances", "ports", "env"} <= set(form.errors)
    assert "/container/portMappings(0)/containerPort" in " ".join(form.errors["ports"])
    html = response.content.decode()
    assert 'class="field invalid" data-field="cpus"' in html
    assert not App.objects.exists() and not Instance.objects.exists() and not AppVersion.objects.exists()


def test_a_non_number_is_refused_by_the_form_itself(tenant, developer, login):
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"mem": "lots", "ports": "http"})
    assert response.status_code == 422
    assert set(response.context["form"].errors) == {"mem", "ports"}
    assert not App.objects.exists()


def test_an_existing_app_id_and_an_exceeded_quota_are_field_errors(tenant, developer, login):
    deployed(tenant, developer)
    client = login(developer)
    exists = client.post(f"/t/{tenant.slug}/apps/deploy/", FORM)
    assert "already exists" in " ".join(exists.context["form"].errors["app_id"])
    Quota.objects.filter(tenant=tenant).update(memory_mib=200)
    over = client.post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"app_id": "/big", "mem": "512"})
    assert over.status_code == 422 and "Quota exceeded" in " ".join(over.context["form"].errors["mem"])
    assert list(App.objects.values_list("marathon_id", flat=True)) == ["/hello"]


def test_json_mode_reports_malformed_json_by_line_and_column(tenant, developer, login):
    text = '{\n  "id": "/hello",\n  "cpus": 0.5,,\n}'
    response = login(developer).post(f"/t/{tenant.slug}/apps/deploy/", {"mode": "json", "definition_json": text})
    assert response.status_code == 422
    assert response.context["json_form"].json_error_position == (3, 15)
    html = response.content.decode()
    assert "line 3, column 15" in html and 'data-error-line="3"' in html
    assert not App.objects.exists()


def test_json_mode_lists_each_error_with_its_path(tenant, developer, login):
    body = {"id": "/hello", "cpus": -1, "instances": "two", "fetch": [{"uri": "x"}], "container": {"docker": {}}}
    response = login(developer).post(
        f"/t/{tenant.slug}/apps/deploy/", {"mode": "json", "definition_json": json.dumps(body)}
    )
    assert response.status_code == 422
    paths = {detail["path"] for detail in response.context["json_form"].path_errors}
    assert {"/cpus", "/instances", "/fetch", "/container/docker/image"} <= paths
    assert 'data-path="/cpus"' in response.content.decode()
    assert not App.objects.exists() and not Deployment.objects.exists()


def test_json_mode_deploys_a_valid_definition(tenant, developer, login):
    body = {"id": "/json-app", "instances": 2, "cpus": 0.25, "mem": 64, "container": {"docker": {"image": IMAGE}}}
    response = login(developer).post(
        f"/t/{tenant.slug}/apps/deploy/", {"mode": "json", "definition_json": json.dumps(body)}
    )
    assert response.status_code == 302
    assert Instance.objects.filter(app__marathon_id="/json-app").count() == 2


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/id", "app_id"),
        ("/container/docker/image", "image"),
        ("/container/portMappings(1)/hostPort", "ports"),
        ("/healthChecks(0)/portIndex", "health_check"),
        ("/env/A", "env"),
        ("/mem", "mem"),
        ("/fetch", None),
        ("/", None),
    ],
)
def test_error_paths_map_to_form_fields(path, field):
    assert field_for_path(path) == field


def test_viewer_sees_the_pages_but_cannot_deploy_or_act(tenant, developer, member_of, login):
    app = deployed(tenant, developer)
    client = login(member_of(tenant, TenantRole.VIEWER))
    for path in ("apps/", "apps/deploy/", f"apps/{app.pk}/"):
        assert client.get(f"/t/{tenant.slug}/{path}").status_code == 200
    page = client.get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert 'id="actions"' not in page and 'value="kill"' not in page
    assert client.post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"app_id": "/other"}).status_code == 403
    assert client.post(f"/t/{tenant.slug}/apps/{app.pk}/action/", {"action": "delete"}).status_code == 403
    assert list(App.objects.values_list("marathon_id", "deleting")) == [("/hello", False)]


def test_another_tenants_app_pages_are_404(tenant, other_tenant, developer, member_of, login):
    app = deployed(tenant, developer)
    client = login(member_of(other_tenant, TenantRole.OWNER))
    assert client.get(f"/t/{tenant.slug}/apps/").status_code == 404
    assert client.get(f"/t/{tenant.slug}/apps/{app.pk}/").status_code == 404
    # The app id under the user's own tenant does not find it either.
    assert client.get(f"/t/{other_tenant.slug}/apps/{app.pk}/").status_code == 404
    assert client.post(f"/t/{other_tenant.slug}/apps/{app.pk}/action/", {"action": "delete"}).status_code == 404
    assert not App.objects.get().deleting


def test_pages_need_login_and_posts_need_csrf(tenant, developer, client):
    response = client.get(f"/t/{tenant.slug}/apps/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(developer)
    assert strict.post(f"/t/{tenant.slug}/apps/deploy/", FORM).status_code == 403
    assert not App.objects.exists()


def test_actions_call_the_services(tenant, developer, login):
    app = deployed(tenant, developer)
    client = login(developer)
    action = f"/t/{tenant.slug}/apps/{app.pk}/action/"
    locked = client.post(action, {"action": "scale", "instances": "2"}, follow=True)
    assert "locked by one or more deployments" in locked.content.decode()
    Deployment.objects.update(status=DeploymentStatus.SUCCEEDED)
    client.post(action, {"action": "scale", "instances": "2"})
    assert Instance.objects.filter(app=app).count() == 1  # the engine adds the second one
    assert app.versions.count() == 2 and Deployment.objects.filter(kind="scale", status="running").exists()
    client.post(action, {"action": "stop", "force": "on"})
    app.refresh_from_db()
    assert app.current_version.definition["app"]["instances"] == 0
    first = app.versions.order_by("created_at").first()
    client.post(action, {"action": "rollback", "version": first.version, "force": "on"})
    app.refresh_from_db()
    assert app.current_version.definition["app"]["instances"] == 1 and app.versions.count() == 4
    bad = client.post(action, {"action": "scale", "instances": "-1"}, follow=True)
    assert "nothing was changed" in bad.content.decode() and app.versions.count() == 4
    assert client.post(action, {"action": "kill", "instance": "not-a-uuid"}).status_code == 302
    response = client.post(action, {"action": "delete"})
    assert response["Location"] == f"/t/{tenant.slug}/apps/"
    app.refresh_from_db()
    assert app.deleting
    assert client.get(f"/t/{tenant.slug}/apps/{app.pk}/").status_code == 404
    assert "stopping its VMs" in client.get(f"/t/{tenant.slug}/apps/").content.decode()


def test_kill_stops_one_instance_of_the_app_only(tenant, other_tenant, developer, member_of, login):
    app = deployed(tenant, developer)
    foreign = deployed(other_tenant, member_of(other_tenant, TenantRole.OWNER), app_id="/foreign")
    mine, theirs = Instance.objects.get(app=app), Instance.objects.get(app=foreign)
    action = f"/t/{tenant.slug}/apps/{app.pk}/action/"
    client = login(developer)
    refused = client.post(action, {"action": "kill", "instance": str(theirs.pk)}, follow=True)
    assert "nothing was changed" in refused.content.decode()
    client.post(action, {"action": "kill", "instance": str(mine.pk)})
    mine.refresh_from_db(), theirs.refresh_from_db()
    assert mine.status in (InstanceStatus.STOPPING, InstanceStatus.STOPPED)
    assert theirs.status == InstanceStatus.STAGED


def test_app_page_shows_phases_timings_and_a_failed_boot(tenant, developer, login):
    app = deployed(tenant, developer)
    instance = Instance.objects.get(app=app)
    start = timezone.now() - timedelta(seconds=30)
    instance.phase_times = {
        "staged": start.isoformat(),
        "pulling": (start + timedelta(seconds=1)).isoformat(),
        "preparing": (start + timedelta(seconds=3.5)).isoformat(),
        "booting": (start + timedelta(seconds=4)).isoformat(),
        "failed": (start + timedelta(seconds=10)).isoformat(),
    }
    instance.status = InstanceStatus.FAILED
    instance.failure_reason = "the guest init could not mount the root filesystem"
    instance.console_tail = "hypervm-init: mount /dev/disk/by-id/virtio-rootfs failed"
    instance.timings_s = {"pull": 2.5, "boot": 6.0}
    instance.save()
    page = login(developer).get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert "could not mount the root filesystem" in page and "virtio-rootfs failed" in page
    assert 'data-phase="pulling">pulling\n      <small class="num">2.5 s</small>' in page
    assert 'data-phase="booting">booting\n      <small class="num">6.0 s</small>' in page
    assert "pull 2.50 s" in page


def test_fragment_and_live_attributes(tenant, developer, login):
    app = deployed(tenant, developer)
    client = login(developer)
    page = client.get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert f'data-ws-app="/ws/t/{tenant.slug}/apps/{app.pk}/"' in page and "data-last-event-id=" in page
    instance = Instance.objects.get(app=app)
    assert f'data-console-url="/ws/t/{tenant.slug}/instances/{instance.pk}/console/"' in page
    fragment = client.get(f"/t/{tenant.slug}/apps/{app.pk}/?fragment=1").content.decode()
    assert "<html" not in fragment and 'data-fragment="instances"' in fragment


def test_empty_app_list_points_to_the_demo_image(tenant, developer, member_of, login):
    registry = ImageRegistry.objects.create(tenant=tenant, name="local", url="http://127.0.0.1:5000", insecure=True)
    page = login(developer).get(f"/t/{tenant.slug}/apps/").content.decode()
    assert "No apps yet" in page and f"registry={registry.pk}" in page and "Deploy the demo image" in page
    deploy = login(developer).get(f"/t/{tenant.slug}/apps/deploy/?registry={registry.pk}&image=demo/hello:latest")
    assert deploy.context["form"]["image"].value() == "demo/hello:latest"
    viewer_page = login(member_of(tenant, TenantRole.VIEWER)).get(f"/t/{tenant.slug}/apps/").content.decode()
    assert "ask a developer" in viewer_page


def test_hosts_page_is_for_platform_admins(tenant, developer, developer_app_host, login):
    assert login(developer).get("/platform/hosts/").status_code == 403
    page = login(UserFactory(is_staff=True)).get("/platform/hosts/").content.decode()
    assert 'data-host="h1"' in page and "TCG (qemu)" in page
    assert "0.5 / 4" not in page and "1 / 4" in page and "128 / 2048 MiB" in page


def test_hosts_page_shows_the_warm_pool_from_the_heartbeat_and_the_warm_start_rate(
    tenant, developer, developer_app_host, login
):
    from portal.services.hosts import host_heartbeat

    host_heartbeat(name="h1", warm_pool={"1x128": {"ready": 1, "target": 2}, "not a shape": {"ready": 9, "target": 9}})
    instances = list(Instance.objects.filter(host=developer_app_host))
    Instance.objects.filter(pk=instances[0].pk).update(timings_s={"claim": 0.05, "boot_to_exec": 0.3})
    Instance.objects.filter(pk__in=[i.pk for i in instances[1:]]).update(timings_s={"boot_to_exec": 2.0})
    page = login(UserFactory(is_staff=True)).get("/platform/hosts/").content.decode()
    assert "1x128 MiB: 1 / 2 ready" in page and "not a shape" not in page
    assert f"1 of {len(instances)} starts warm" in page


@pytest.fixture
def developer_app_host(tenant, developer):
    host = compute_host_create("h1", vcpus=4, memory_mib=2048, virt_type=VirtType.QEMU)
    app = deployed(tenant, developer)
    Instance.objects.filter(app=app).update(host=host)
    return host


def list_fragment(client, tenant) -> str:
    return client.get(f"/t/{tenant.slug}/apps/?fragment=1").content.decode()


def test_app_list_counts_come_from_one_query_whatever_the_number_of_apps(
    tenant, developer, login, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Quota.objects.filter(tenant=tenant).update(vcpus=100, memory_mib=100_000, instances=100, published_ports=100)
    client = login(developer)
    checked = parse_app_definition(
        {
            "id": "/checked",
            "instances": 3,
            "container": {"docker": {"image": IMAGE}, "portMappings": [{"containerPort": 80, "hostPort": 0}]},
            "networks": [{"mode": "container/bridge"}],
            "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0}],
        }
    )
    app = app_create(access=tenant_access_resolve(user=developer, slug=tenant.slug), definition=checked).app
    first, second, third = Instance.objects.filter(app=app).order_by("created_at")
    Instance.objects.filter(pk=first.pk).update(status=InstanceStatus.HEALTHY)
    Instance.objects.filter(pk=second.pk).update(status=InstanceStatus.UNHEALTHY)
    Instance.objects.filter(pk=third.pk).update(status=InstanceStatus.BOOTING)
    list_fragment(client, tenant)  # session and content types cached, as on every later fetch
    with CaptureQueriesContext(connection) as one_app:
        page = list_fragment(client, tenant)
    assert '2</span> / <span data-count="target">3</span> running · 1 starting · 1 healthy' in page
    assert "deploying" in page

    for index in range(6):
        more = deployed(tenant, developer, app_id=f"/more-{index}", instances=2)
        Instance.objects.filter(app=more).update(status=InstanceStatus.RUNNING)
        Deployment.objects.filter(app=more).update(status=DeploymentStatus.SUCCEEDED)
    with django_assert_max_num_queries(len(one_app.captured_queries)):
        page = list_fragment(client, tenant)
    assert page.count('<tr data-app="/more-') == 6
    assert page.count('<span data-count="running">2</span> / <span data-count="target">2</span> running') == 6
    assert page.count('<span class="badge good">running</span>') == 6


@pytest.fixture
def platform_registry(settings):
    settings.EMBEDDED_REGISTRY_URL = "http://127.0.0.1:5000"
    settings.EMBEDDED_REGISTRY_USERNAME = "demo"
    settings.EMBEDDED_REGISTRY_PASSWORD_FILE = ""


def test_the_deploy_form_starts_from_the_platform_registry_and_what_the_demo_image_needs(
    tenant, developer, login, platform_registry
):
    response = login(developer).get(f"/t/{tenant.slug}/apps/deploy/")
    form, page = response.context["form"], response.content.decode()
    assert form["registry"].value() == "platform"
    assert form["ports"].value() == "8080" and form["health_check"].value() == "HTTP"
    hint = (
        "repository:tag in local (127.0.0.1:5000, the platform&#x27;s, pull only), "
        "e.g. demo/hello:latest (the demo web server, port 8080)."
    )
    assert f'<small id="id_image_help">{hint}</small>' in page
    assert 'data-hint-target="id_image_help"' in page
    full = "A full reference: registry host, repository and tag, e.g. 127.0.0.1:5000/demo/hello:latest."
    assert f'<option value="" data-hint="{full} Without a registry host it names an image on Docker Hub' in page


def test_the_image_hint_follows_the_registry_chosen(tenant, developer, login, platform_registry):
    own = ImageRegistry.objects.create(tenant=tenant, name="team", url="https://registry.example.com", insecure=False)
    client = login(developer)
    chosen = client.get(f"/t/{tenant.slug}/apps/deploy/?registry={own.pk}").context["form"]
    assert chosen["image"].help_text == "repository:tag in team (registry.example.com), e.g. team/web:1.0."
    resent = client.post(f"/t/{tenant.slug}/apps/deploy/", FORM | {"registry": "", "cpus": "x"}).context["form"]
    assert resent["image"].help_text.startswith("A full reference: registry host, repository and tag")


def test_without_any_registry_the_form_asks_for_a_full_reference(tenant, developer, login, settings):
    settings.EMBEDDED_REGISTRY_URL = ""
    form = login(developer).get(f"/t/{tenant.slug}/apps/deploy/").context["form"]
    assert form["registry"].value() == "" and form["ports"].value() in (None, "")
    assert "e.g. registry.example.com/team/web:1.0" in form["image"].help_text


def test_an_instance_retrying_shows_why_which_attempt_and_when_escaped(tenant, developer, login):
    from portal.services.instances import instance_retry_note

    app = deployed(tenant, developer)
    instance = Instance.objects.get(app=app)
    Instance.objects.filter(pk=instance.pk).update(status=InstanceStatus.PULLING)
    error = 'cannot reach registry <img src=x onerror="alert(1)">'
    noted = instance_retry_note(instance_id=instance.pk, attempt=2, attempts=4, retry_in_s=30, error=error)
    assert noted.status == InstanceStatus.PULLING and noted.launch_attempt == 2
    page = login(developer).get(f"/t/{tenant.slug}/apps/{app.pk}/?fragment=1").content.decode()
    assert "<img src=x" not in page
    escaped = "pull failed: cannot reach registry &lt;img src=x onerror=&quot;alert(1)&quot;&gt; (attempt 2 of 4)"
    assert f'<p class="warn instance-note" data-attempt="2">{escaped} · next try in <span data-until=' in page
    assert "s</span></p>" in page
    event = Event.objects.filter(instance=instance).latest("pk")  # open pages re-fetch on it
    assert event.data["status"] == "pulling" and event.data["message"].startswith("pull failed: cannot reach")


def test_a_retry_note_for_an_instance_that_ended_changes_nothing(tenant, developer):
    from portal.services.instances import instance_retry_note

    instance = Instance.objects.get(app=deployed(tenant, developer))
    Instance.objects.filter(pk=instance.pk).update(status=InstanceStatus.FAILED, failure_reason="image not found")
    assert instance_retry_note(instance_id=instance.pk, attempt=1, attempts=4, retry_in_s=2, error="x") is None
    assert Instance.objects.get(pk=instance.pk).failure_reason == "image not found"


def test_the_site_icon_is_served_where_browsers_ask_for_it(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert "max-age=86400" in response["Cache-Control"]


def test_a_deployment_started_seconds_ago_says_so(tenant, developer, login):
    app = deployed(tenant, developer)
    page = login(developer).get(f"/t/{tenant.slug}/apps/{app.pk}/?fragment=1").content.decode()
    assert re.search(r"started \d+\.\d s ago", page), "the running deployment's age in seconds"
    assert "0 minutes ago" not in page


def test_an_instance_row_says_whether_it_started_warm_or_cold(tenant, developer, login):
    app = deployed(tenant, developer)
    instance = Instance.objects.filter(app=app).first()
    Instance.objects.filter(pk=instance.pk).update(timings_s={"claim": 0.05, "boot_to_exec": 0.3})
    page = login(developer).get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert "<span data-start>warm start</span>" in page
    Instance.objects.filter(pk=instance.pk).update(timings_s={"define": 0.1, "boot_to_exec": 2.0})
    page = login(developer).get(f"/t/{tenant.slug}/apps/{app.pk}/").content.decode()
    assert "<span data-start>cold start</span>" in page
