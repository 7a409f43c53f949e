"""The real marathon-python 0.13.0 client, unchanged, against the live portal (daphne + a Celery
worker on the test database). No compute host is needed: without one, instances stay staged,
and the test asserts only what the API answers and stores."""

import collections
import collections.abc
import threading
import time

import pytest
import requests
from requests.adapters import HTTPAdapter

from portal.choices import DeploymentKind, DeploymentStatus
from portal.models import App, Deployment, Instance
from tenants import services as tenant_services
from tenants.choices import TenantRole

collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]  # API-NOTES pitfall 5

from marathon import MarathonClient, NotFoundError  # noqa: E402
from marathon.models import MarathonApp  # noqa: E402
from marathon.models.container import MarathonContainer, MarathonDockerContainer  # noqa: E402
from marathon.models.events import MarathonDeploymentInfo, MarathonEventStreamAttached  # noqa: E402

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

APP_ID = "/shop/web"
SSE_READ_TIMEOUT_S = 25  # above the server's 10 s heartbeat


class ReadTimeoutAdapter(HTTPAdapter):
    """event_stream() sets no timeout (pitfall 7): give its session one."""

    def send(self, request, **kwargs):
        kwargs["timeout"] = kwargs.get("timeout") or SSE_READ_TIMEOUT_S
        return super().send(request, **kwargs)


@pytest.fixture
def client(live_stack, tenant, member_of):
    developer = member_of(tenant, TenantRole.DEVELOPER)
    _, key = tenant_services.api_token_create(user=developer, name="client", tenant=tenant)
    sse_session = requests.Session()
    sse_session.mount("http://", ReadTimeoutAdapter())
    # event_stream() sends no auth_token (pitfall 6): the session carries the portal's own scheme.
    sse_session.headers["Authorization"] = f"Token {key}"
    return MarathonClient(live_stack.url, auth_token=key, timeout=10, sse_session=sse_session)


def running_deployments(app_id: str) -> list[Deployment]:
    return list(Deployment.objects.filter(app_marathon_id=app_id, status=DeploymentStatus.RUNNING))


def wait_for(probe, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (result := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def current_version_tasks(client, app_id: str) -> list:
    version = client.get_app(app_id).version
    return [task for task in client.list_tasks(app_id) if task.version == version and task.state == "TASK_STAGING"]


def test_marathon_client_drives_an_app_lifecycle(client, tenant):
    assert client.ping() == b"pong"
    info = client.get_info()
    assert (info.elected, info.marathon_config.hostname, info.name) == (True, "127.0.0.2", "hypervm-caas")

    new_app = MarathonApp(
        cmd="sleep 3600",
        mem=64,
        cpus=0.1,
        instances=2,
        env={"STAGE": "one"},
        container=MarathonContainer(docker=MarathonDockerContainer(image="demo/hello:latest")),
    )
    created = client.create_app(APP_ID, new_app)
    assert created and created.id == APP_ID and len(created.deployments) == 1
    app_row = App.objects.get(tenant=tenant, marathon_id=APP_ID)
    assert Instance.objects.filter(app=app_row).count() == 2

    assert [app.id for app in client.list_apps()] == [APP_ID]
    assert [app.id for app in client.list_apps(app_id="shop")] == [APP_ID]
    fetched = client.get_app(APP_ID)
    assert (fetched.instances, len(fetched.tasks), fetched.tasks_staged) == (2, 2, 2)
    assert [deployment.affected_apps for deployment in client.list_deployments()] == [[APP_ID]]

    scaled = client.scale_app(APP_ID, instances=3, force=True)  # GET, then PUT /v2/apps//shop/web
    scale_deployment = Deployment.objects.get(pk=scaled["deploymentId"])
    assert scale_deployment.kind == DeploymentKind.SCALE
    assert client.get_app(APP_ID).instances == 3

    edited = client.get_app(APP_ID)  # the usual edit: GET, change, PUT all of it back
    edited.env = {"STAGE": "two"}
    updated = client.update_app(APP_ID, edited, force=True)
    assert Deployment.objects.get(pk=updated["deploymentId"]).kind == DeploymentKind.RESTART
    assert client.get_app(APP_ID).env == {"STAGE": "two"}

    restarted = client.restart_app(APP_ID, force=True)
    assert Deployment.objects.get(pk=restarted["deploymentId"]).kind == DeploymentKind.RESTART
    assert len(client.list_versions(APP_ID)) == 4

    tasks = client.list_tasks(APP_ID)
    assert tasks and all(task.app_id == APP_ID for task in tasks)
    assert {task.id for task in client.list_tasks()} == {task.id for task in tasks}
    # The restart replaces every task; the worker converges the app meanwhile, so wait (bounded)
    # for a task of the new version to kill.
    victim = wait_for(lambda: current_version_tasks(client, APP_ID))[0]
    # kill_task() cannot pass force=true, and the restart cannot finish without a host: stop it.
    for deployment in client.list_deployments():
        assert client.delete_deployment(deployment.id, force=True) == {}
    assert client.list_deployments() == [] and running_deployments(APP_ID) == []
    killed = client.kill_task(APP_ID, victim.id, scale=True)
    assert set(killed) == {"deploymentId", "version"}
    assert client.get_app(APP_ID).instances == 2

    client.delete_app(APP_ID, force=True)
    with pytest.raises(NotFoundError):
        client.get_app(APP_ID)
    assert client.list_apps() == []
    # The worker finishes the StopApplication deployment: with no VM to stop, the app row goes.
    wait_for(lambda: not App.objects.filter(pk=app_row.pk).exists())
    assert not Instance.objects.filter(app_id=app_row.pk).exists()


def test_marathon_client_event_stream(client):
    events = []

    def listen():
        for event in client.event_stream():
            events.append(event)
            if isinstance(event, MarathonDeploymentInfo):
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events and isinstance(events[0], MarathonEventStreamAttached)

    client.create_app(
        "/streamed",
        MarathonApp(
            cmd="sleep 1",
            mem=64,
            cpus=0.1,
            instances=0,
            container=MarathonContainer(docker=MarathonDockerContainer(image="demo/hello:latest")),
        ),
    )
    listener.join(timeout=15)
    assert not listener.is_alive(), [event.event_type for event in events]
    assert isinstance(events[-1], MarathonDeploymentInfo)
