"""A compute host's instance reports, applied by the portal (issue 12): level-triggered, so a
duplicate, late or out-of-order report changes nothing, and a host reports only its own instances."""

import pytest

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, Instance
from portal.services.apps import app_create
from portal.services.host_reports import instance_report_apply
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tests.support.portal_fixtures import compute_host_create

pytestmark = pytest.mark.django_db
APP = {"id": "/rep", "cmd": "sleep 1000", "cpus": 0.1, "mem": 64, "container": {"docker": {"image": "demo/h:1"}}}


@pytest.fixture
def staged(tenant, member_of):
    compute_host_create("rep-host")
    compute_host_create("other-host", memory_mib=1)  # never chosen: too small
    access = tenant_access_resolve(user=member_of(tenant, TenantRole.DEVELOPER), slug=tenant.slug)
    app_create(access=access, definition=parse_app_definition(APP))
    return Instance.objects.get(app__marathon_id="/rep")


def report(instance, state, **fields):
    instance_report_apply(report={"instance_id": str(instance.pk), "host": "rep-host", "state": state, **fields})
    instance.refresh_from_db()
    return instance


def test_a_running_report_lands_even_when_the_booting_one_was_lost(staged) -> None:
    App.objects.filter(pk=staged.app_id).update(launch_failures=2)

    running = report(staged, "running", timings_s={"boot": 1.5}, volume_used_bytes={})

    assert running.status == InstanceStatus.RUNNING and running.timings_s == {"boot": 1.5}
    assert App.objects.get(pk=staged.app_id).launch_failures == 0


def test_duplicate_and_late_reports_change_nothing(staged) -> None:
    report(staged, "pulling")
    running = report(staged, "running", timings_s={})
    phase_times = dict(running.phase_times)

    assert report(staged, "booting").status == InstanceStatus.RUNNING  # late
    assert report(staged, "running", timings_s={"boot": 9.0}).phase_times == phase_times  # again
    failed = report(staged, "failed", launch_failed=True, error="the app exited with code 3", exit_code=3)
    assert (failed.status, failed.exit_code) == (InstanceStatus.FAILED, 3)
    assert report(staged, "running", timings_s={}).status == InstanceStatus.FAILED  # a terminal state stays
    assert report(staged, "lost", error="later").failure_reason == "the app exited with code 3"


def test_a_retry_report_moves_to_its_step_first_then_notes_the_retry(staged) -> None:
    retrying = report(staged, "pulling", retry={"attempt": 1, "attempts": 4, "retry_in_s": 5, "error": "down"})

    assert retrying.status == InstanceStatus.PULLING and retrying.launch_attempt == 1
    assert retrying.not_before is not None


def test_a_host_cannot_report_on_an_instance_placed_elsewhere(staged) -> None:
    instance_report_apply(report={"instance_id": str(staged.pk), "host": "other-host", "state": "failed"})
    staged.refresh_from_db()

    assert staged.status == InstanceStatus.STAGED


@pytest.mark.parametrize(
    "bad",
    [
        {"instance_id": "not-a-uuid", "host": "rep-host", "state": "failed"},
        {"state": "failed"},  # no host
        {"host": "rep-host", "state": "deleted"},
        {"host": "rep-host", "state": "failed", "exit_code": "3; DROP"},
        {"host": "rep-host", "state": None, "retry": {"attempt": "x"}},
    ],
)
def test_a_malformed_report_is_dropped_without_raising(staged, bad) -> None:
    instance_report_apply(report={"instance_id": str(staged.pk), **bad})
    staged.refresh_from_db()

    assert staged.status == InstanceStatus.STAGED
