"""Health checks judged by the portal (issue 12): the host only runs the probes the portal claims
and reports alive/cause; grace, consecutive failures, healthy/unhealthy and the kill are here."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, Instance
from portal.services.health import health_probes_claim, instance_health_judge
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
CHECK = {
    "protocol": "TCP",
    "portIndex": 0,
    "intervalSeconds": 30,
    "gracePeriodSeconds": 60,
    "maxConsecutiveFailures": 2,
}


@pytest.fixture
def running(tenant):
    host = compute_host_create("health-host")
    body = {
        "id": "/checked",
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 64,
        "container": {"docker": {"image": "demo/h:1"}, "portMappings": [{"containerPort": 80, "hostPort": 0}]},
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [CHECK],
    }
    app = App.objects.create(tenant=tenant, marathon_id="/checked")
    version = AppVersion.objects.create(app=app, version="v1", definition=parse_app_definition(body).to_stored())

    def make(running_for_s: float) -> Instance:
        since = (timezone.now() - timedelta(seconds=running_for_s)).isoformat()
        return Instance.objects.create(
            tenant=tenant,
            app=app,
            version=version,
            vcpus=1,
            memory_mib=64,
            host=host,
            host_ports=[31005],
            status=InstanceStatus.RUNNING,
            phase_times={InstanceStatus.RUNNING: since},
        )

    return make


def test_a_probe_is_claimed_once_per_interval_with_only_what_the_host_runs(running) -> None:
    instance = running(0)

    (probe,) = health_probes_claim(host_name="health-host")

    assert probe == {
        "instance_id": str(instance.pk),
        "host_ports": [31005],
        "check": {"protocol": "tcp", "path": None, "port": None, "port_index": 0, "command": None, "timeout_s": 20},
    }
    assert health_probes_claim(host_name="health-host") == []
    assert health_probes_claim(host_name="another-host") == []


def test_failures_within_the_grace_period_do_not_count(running) -> None:
    instance = running(5)
    health_probes_claim(host_name="health-host")

    instance_health_judge(instance=instance, alive=False, cause="TCP connect failed")

    instance.refresh_from_db()
    assert instance.status == InstanceStatus.RUNNING and instance.health.get("consecutiveFailures", 0) == 0
    assert instance.health["lastFailureCause"] == "TCP connect failed"


def test_failures_after_the_grace_make_it_unhealthy_then_stop_it_at_the_limit(running) -> None:
    instance = running(600)

    instance_health_judge(instance=instance, alive=False, cause="refused")
    assert Instance.objects.get(pk=instance.pk).status == InstanceStatus.UNHEALTHY
    instance_health_judge(instance=instance, alive=False, cause="refused")

    instance.refresh_from_db()
    assert instance.status == InstanceStatus.STOPPING and instance.health["consecutiveFailures"] == 2


def test_a_success_makes_it_healthy_and_a_late_result_of_an_ended_one_changes_nothing(running) -> None:
    instance = running(600)

    instance_health_judge(instance=instance, alive=True, cause="")
    assert Instance.objects.get(pk=instance.pk).status == InstanceStatus.HEALTHY
    Instance.objects.filter(pk=instance.pk).update(status=InstanceStatus.STOPPED)
    instance_health_judge(instance=instance, alive=False, cause="late")

    instance.refresh_from_db()
    assert instance.status == InstanceStatus.STOPPED and "lastFailure" not in instance.health
