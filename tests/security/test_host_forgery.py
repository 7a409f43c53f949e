"""Issue 12: a compute host (or anything else that can write to the broker) speaks only for
itself, and takes commands only from the portal. Against the running stack (portal worker,
beat, a real host worker booting a real HyperVM): reports put on the portal's queue unsigned,
signed with another host's key, or changed after signing change nothing; commands on a host's
queue the portal did not sign for it leave its VM alone; a report signed with the right host's
key is applied (the check is not simply refusing everything)."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import current_app

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import ComputeHost, Instance
from portal.selectors import app_get
from portal.services.apps import app_create, app_delete
from portal.services.host_keys import host_key
from tests.portal.test_pipeline import active, deployment_done, http_app, wait_until
from tests.support.tenant_access import owner_access_with_registry
from vmworker.report_signing import sign
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
REPORTS_SETTLE_S = 6  # the portal worker takes its queue in order: later reports are past these


@pytest.fixture
def access(tenant, member_of, registry, test_images):
    return owner_access_with_registry(tenant, member_of, registry)


def send(live_stack, task: str, args: list, *, key: bytes | None = None, signed_args: list | None = None) -> None:
    """Puts the task on the portal's queue, signed with ``key`` (over ``signed_args`` if given)."""
    kwargs = {"sent_at": time.time()}
    if key is not None:
        kwargs["signature"] = sign(key, task, args if signed_args is None else signed_args, kwargs)
    current_app.send_task(task, args=args, kwargs=kwargs, queue=live_stack.queue)


def registration(name: str) -> dict:
    return {
        "name": name,
        "libvirt_uri": "qemu:///system",
        "vcpus": 64,
        "memory_mib": 1 << 20,
        "virt_type": "qemu",
        "worker_started_at": time.time(),
        "boot_timeout_s": 90,
        "register": True,
    }


def test_forged_host_reports_change_nothing_and_a_signed_one_is_applied(live_stack, one_host, access, test_images):
    deployment = app_create(
        access=access, definition=parse_app_definition(http_app(test_images, app_id="/forged", instances=1))
    )
    wait_until("healthy", lambda: deployment_done(deployment))
    (instance,) = active("/forged")
    lost = {"instance_id": str(instance.pk), "host": one_host.name, "state": "lost", "error": "forged"}
    other_key = host_key(f"{one_host.name}-other")

    send(live_stack, "portal.instance_report", [lost])
    send(live_stack, "portal.instance_report", [lost], key=other_key)
    honest = {"instance_id": str(instance.pk), "host": one_host.name, "state": None}
    send(live_stack, "portal.instance_report", [lost], key=host_key(one_host.name), signed_args=[honest])
    rogue = registration(f"rogue-{uuid.uuid4().hex[:8]}")
    send(live_stack, "portal.host_report", [rogue])
    send(live_stack, "portal.host_report", [rogue], key=other_key)
    # Commands on the host's own queue that the portal did not sign: its VM must stay.
    removal = [one_host.name, [str(instance.pk)]]
    for kwargs in (
        {},
        {
            "sent_at": time.time(),
            "signature": sign(other_key, "vmworker.remove_instances", removal, {"sent_at": time.time()}),
        },
    ):
        current_app.send_task("vmworker.remove_instances", args=removal, kwargs=kwargs, queue=f"host.{one_host.name}")
    # The control: a registration signed with its own host's key is taken.
    provisioned = registration(f"provisioned-{uuid.uuid4().hex[:8]}")
    send(live_stack, "portal.host_report", [provisioned], key=host_key(provisioned["name"]))

    wait_until(
        "the signed registration applied", lambda: ComputeHost.objects.filter(name=provisioned["name"]).exists(), 60
    )
    time.sleep(REPORTS_SETTLE_S)
    try:
        assert Instance.objects.get(pk=instance.pk).status == InstanceStatus.HEALTHY
        assert str(instance.pk) in HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir)).live_instance_ids()
        assert not ComputeHost.objects.filter(name=rogue["name"]).exists()
        log = (live_stack.log_dir / "worker.log").read_text(errors="replace")
        assert log.count("host_report.signature_refused") >= 5
        assert one_host.log_path.read_text(errors="replace").count("host.command_refused") >= 2
    finally:
        ComputeHost.objects.filter(name=provisioned["name"]).update(state="down")
        app_delete(access=access, app=app_get(tenant=access.tenant, marathon_id="/forged"))
        wait_until("deleted", lambda: not active("/forged"))
        ComputeHost.objects.filter(name=provisioned["name"]).delete()
