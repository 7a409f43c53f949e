"""The reconciler converges only the apps the engine has something to do for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.choices import DeploymentStatus, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, ComputeHost, Deployment, Instance
from portal.services.apps import app_create
from portal.services.hosts import PublishAddressRefused, apps_needing_converge, host_register
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def host():
    return compute_host_create("host-r")


@pytest.fixture
def app_at_rest(tenant, member_of, host):
    """Two running instances of the current version, its deployment finished."""
    access = tenant_access_resolve(user=member_of(tenant, TenantRole.DEVELOPER), slug=tenant.slug)
    definition = parse_app_definition(
        {"id": "/rest", "instances": 2, "cpus": 0.1, "mem": 128, "container": {"docker": {"image": "r/x:1"}}}
    )
    deployment = app_create(access=access, definition=definition)
    Instance.objects.filter(app=deployment.app).update(host=host, status=InstanceStatus.RUNNING)
    Deployment.objects.filter(pk=deployment.pk).update(status=DeploymentStatus.SUCCEEDED)
    return deployment.app


def test_an_app_at_rest_is_left_alone(app_at_rest):
    assert apps_needing_converge() == []


def test_a_running_deployment_is_converged(app_at_rest):
    Deployment.objects.filter(app=app_at_rest).update(status=DeploymentStatus.RUNNING)
    assert apps_needing_converge() == [app_at_rest.pk]


def test_an_app_being_deleted_is_converged(app_at_rest):
    App.objects.filter(pk=app_at_rest.pk).update(deleting=True)
    assert apps_needing_converge() == [app_at_rest.pk]


@pytest.mark.parametrize("ended", [InstanceStatus.FAILED, InstanceStatus.LOST, InstanceStatus.STOPPING])
def test_an_instance_to_replace_is_converged_once_the_backoff_has_passed(app_at_rest, ended):
    Instance.objects.filter(pk=app_at_rest.instances.first().pk).update(status=ended)
    App.objects.filter(pk=app_at_rest.pk).update(next_launch_at=timezone.now() + timedelta(minutes=5))
    assert apps_needing_converge() == []  # nothing to do before the backoff ends
    App.objects.filter(pk=app_at_rest.pk).update(next_launch_at=timezone.now() - timedelta(seconds=1))
    assert apps_needing_converge() == [app_at_rest.pk]


def test_too_many_instances_are_converged(app_at_rest, host):
    extra = app_at_rest.instances.first()
    extra.pk = None
    extra.save()
    assert apps_needing_converge() == [app_at_rest.pk]


def test_instances_of_an_old_version_are_converged(app_at_rest):
    old = app_at_rest.current_version
    new = app_at_rest.versions.create(version="2026-11-26T00:00:00.000Z", definition=old.definition)
    App.objects.filter(pk=app_at_rest.pk).update(current_version=new)
    assert apps_needing_converge() == [app_at_rest.pk]


def test_a_staged_instance_without_a_host_is_converged(app_at_rest):
    Instance.objects.filter(pk=app_at_rest.instances.first().pk).update(status=InstanceStatus.STAGED, host=None)
    assert apps_needing_converge() == [app_at_rest.pk]


def register(name: str, publish_ip: str):
    return host_register(
        name=name,
        libvirt_uri="qemu:///system",
        vcpus=2,
        memory_mib=2048,
        virt_type="qemu",
        probe_s=1.0,
        publish_ip=publish_ip,
    )


@pytest.mark.parametrize("publish_ip", ["127.0.0.2", "0.0.0.0"])
def test_a_host_publishing_apps_on_the_portals_own_host_is_not_registered(publish_ip, settings):
    """Its apps would share the portal's cookies (portal.public_host); host workers run no system check."""
    settings.PUBLIC_URL = "http://127.0.0.2:8000"
    with pytest.raises(PublishAddressRefused, match="PORTAL_PUBLIC_URL"):
        register("host-on-portal", publish_ip)
    assert not ComputeHost.objects.filter(name="host-on-portal").exists()

    assert register("host-apart", "127.0.0.1").publish_ip == "127.0.0.1"
