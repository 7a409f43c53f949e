"""The boot spec the portal sends a compute host (issue 12): built from the rows, plain JSON, and
complete: the host turns it into the runtime's InstanceSpec without reading the database. The
registry credentials in it are the image's registry's only."""

import json
from datetime import timedelta

import pytest
from celery import current_app
from django.utils import timezone

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import Instance
from portal.services.apps import app_create
from portal.services.host_keys import host_key
from portal.services.instance_specs import RESEND_BOOT_S, instance_boot_send, instance_boots_resend, instance_spec_build
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.services import registry_create
from tests.support.portal_fixtures import compute_host_create
from vmworker.runtime import InvalidSpec
from vmworker.spec_message import credentials_from_message, spec_from_message

pytestmark = pytest.mark.django_db
APP = {
    "id": "/web",
    "cmd": "python3 -m http.server $PORT0",
    "cpus": 0.5,
    "mem": 128,
    "env": {"GREETING": "hi"},
    "taskKillGracePeriodSeconds": 7,
    "networks": [{"mode": "container/bridge"}],
    "container": {
        "docker": {"image": "127.0.0.1:5101/demo/web:1"},
        "portMappings": [{"containerPort": 8080, "hostPort": 0}],
    },
    "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0}],
}


@pytest.fixture
def deployed(tenant, member_of, settings):
    settings.REGISTRY_HOST_ALLOWLIST = ["127.0.0.1:5101", "127.0.0.1:5102"]
    compute_host_create("spec-host")
    access = tenant_access_resolve(user=member_of(tenant, TenantRole.OWNER), slug=tenant.slug)
    for name, port, password in (("pulled", 5101, "the-one-pull"), ("other", 5102, "never-sent")):
        registry_create(
            access=access, name=name, url=f"http://127.0.0.1:{port}", username="u", password=password, insecure=True
        )
    app_create(access=access, definition=parse_app_definition(APP))
    return Instance.objects.select_related("app", "version", "tenant", "host").get(app__marathon_id="/web")


def test_the_spec_is_plain_json_and_the_host_reads_it_whole(deployed) -> None:
    message = json.loads(json.dumps(instance_spec_build(deployed)))

    spec = spec_from_message(
        message, publish_host_ip="127.0.0.9", host_name="spec-host", host_key=host_key("spec-host")
    )

    assert spec.instance_id == str(deployed.pk) and spec.image == "127.0.0.1:5101/demo/web:1"
    assert [(p.host_ip, p.host_port, p.guest_port) for p in spec.ports] == [("127.0.0.9", deployed.host_ports[0], 8080)]
    assert spec.env["PORT0"] == "8080" and spec.env["GREETING"] == "hi" and spec.env["MARATHON_APP_ID"] == "/web"
    assert spec.network is not None and spec.network.ip_cidr.startswith(f"{deployed.ip_address}/")
    assert spec.stop_grace_s == 7 and spec.metadata["host"] == "spec-host"
    assert message["health_checks"][0] | {"path": "/health", "port_index": 0} == message["health_checks"][0]


def test_the_spec_carries_the_credentials_of_the_images_registry_only_sealed_for_its_host(deployed) -> None:
    text = json.dumps(instance_spec_build(deployed))
    message = json.loads(text)

    assert credentials_from_message(message, host_key("spec-host")) == {"username": "u", "password": "the-one-pull"}
    assert "never-sent" not in text and "the-one-pull" not in text
    with pytest.raises(InvalidSpec):  # another host reading the broker cannot open them
        credentials_from_message(message, host_key("other-host"))
    with pytest.raises(InvalidSpec):
        credentials_from_message(message, None)


def test_the_host_refuses_a_spec_it_does_not_know(deployed) -> None:
    message = instance_spec_build(deployed)

    with pytest.raises(InvalidSpec):
        spec_from_message({**message, "version": 99}, publish_host_ip="127.0.0.1", host_name="h")
    with pytest.raises(InvalidSpec):
        spec_from_message({**message, "ports": [{"host_port": "x"}]}, publish_host_ip="127.0.0.1", host_name="h")


def test_the_boot_message_goes_to_the_instances_host_and_its_shown_args_hold_no_password(deployed, monkeypatch):
    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, **options: sent.append((name, options)))

    assert instance_boot_send(instance_id=deployed.pk)

    ((name, options),) = sent
    assert name == "vmworker.boot_instance" and options["queue"] == "host.spec-host"
    sealed = options["args"][1]["credentials"]
    assert credentials_from_message({"credentials": sealed}, host_key("spec-host"))["password"] == "the-one-pull"
    assert "the-one-pull" not in repr(options)


def test_a_boot_never_run_is_sent_again_by_the_portal_once_per_period(deployed, monkeypatch) -> None:
    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, **options: sent.append(options["args"][0]))
    assert instance_boots_resend(host_names=["spec-host"]) == []  # just placed: its boot may still run
    staged_at = (timezone.now() - timedelta(seconds=RESEND_BOOT_S + 5)).isoformat()
    Instance.objects.filter(pk=deployed.pk).update(phase_times={InstanceStatus.STAGED: staged_at})

    assert instance_boots_resend(host_names=["another-host"]) == []
    assert instance_boots_resend(host_names=["spec-host"]) == [str(deployed.pk)]
    assert instance_boots_resend(host_names=["spec-host"]) == []  # its clock restarted
    assert sent == [str(deployed.pk)]
