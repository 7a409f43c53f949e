"""A published port that a program outside the platform holds: the boot fails with that
reason (not counted as the app's launch failure), the port is blocked on the host, and the
replacement runs on another port and serves the page."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Instance
from portal.services.apps import app_create, app_delete
from tests.portal.test_pipeline import access, http_app, wait_until  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def fetch(port: int) -> bytes | None:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    except OSError:
        return None


def test_a_port_taken_outside_the_platform_is_skipped(live_stack, access, one_host, test_images, settings):  # noqa: F811
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        settings.HOST_PORT_RANGE = (taken, taken + 1)  # this process places the first instance on it
        definition = parse_app_definition(http_app(test_images, app_id="/taken", instances=1, healthChecks=[]))
        app = app_create(access=access, definition=definition).app
        first = Instance.objects.get(app=app)
        assert first.host_ports == [taken]
        failed = wait_until(
            "the first boot to fail on the taken port",
            lambda: Instance.objects.filter(pk=first.pk, status=InstanceStatus.FAILED).first(),
        )
        assert f"127.0.0.1:{taken} is in use by a program outside the platform" in failed.failure_reason
        assert str(taken) in ComputeHost.objects.get(name=one_host.name).blocked_ports
        # The replacement is placed by the engine in the worker, away from the blocked port.
        replacement = wait_until(
            "a replacement running",
            lambda: Instance.objects.filter(app=app, status=InstanceStatus.RUNNING).first(),
        )
        assert replacement.host_ports and replacement.host_ports != [taken]
        # Running means the app was started; its server may still be binding its port.
        page = wait_until("the replacement's page", lambda: fetch(replacement.host_ports[0]), 60)
        assert page
        assert App.objects.get(pk=app.pk).launch_failures == 0
    app_delete(access=access, app=app, force=True)
    wait_until("the app gone", lambda: not App.objects.filter(pk=app.pk).exists())
