"""Tenant networks through the whole stack (web, Celery workers, a host worker, real VMs):
apps of tenant A on its network "backend" reach each other at the addresses the IPAM gave them
(shown in /v2 tasks); tenant B's app, on its own default network with the same subnet, reaches
none of them. Probes are bounded and aim only at these test VMs' addresses."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
import uuid

import pytest
from django.db import close_old_connections

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, Instance, Network
from portal.services.apps import app_create, app_delete
from tenants.selectors import quota_usage
from tests.portal.test_pipeline import access, marathon, wait_until  # noqa: F401 (fixtures)
from tests.support.network_probe import NOT_REACHED, REACHED, probe_results, probe_script
from tests.support.tenant_access import owner_access_with_registry
from vmworker.guestinit.protocol import OutputLine
from vmworker.network.tenant import TenantNetwork
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PROBE_WAIT_S = 150


def app_on(test_images, app_id: str, *, instances: int = 1, network: dict, cmd: str | None = None) -> dict:
    body = {
        "id": app_id,
        "instances": instances,
        "cpus": 0.5,
        "mem": 128,
        "container": {"docker": {"image": test_images["httpd"].reference}},
        "networks": [network],
    }
    if cmd is not None:
        body["cmd"] = cmd
    return body


def running(app_id: str) -> list[Instance]:
    close_old_connections()
    return list(Instance.objects.filter(app__marathon_id=app_id, status=InstanceStatus.RUNNING))


def probe_lines(runtime: HyperVMRuntime, instance: Instance) -> list[str]:
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        lines = [r.text for r in runtime.records(str(instance.pk)) if isinstance(r, OutputLine)]
        results = probe_results(lines)
        if len(results) == 2:
            return results
        assert time.monotonic() < deadline, f"no probe result from {instance.ip_address}: {lines[-5:]}"
        time.sleep(1)


def then_sleep(script: str) -> str:
    return script + "exec /bin/busybox sleep 3600\n"


@pytest.fixture
def outsider_access(other_tenant, member_of, registry):
    return owner_access_with_registry(other_tenant, member_of, registry)


def deploy(who, body: dict) -> None:
    app_create(access=who, definition=parse_app_definition(body))


def test_apps_of_one_tenant_network_reach_each_other_and_another_tenants_app_does_not(
    access,  # noqa: F811 (the fixture imported above)
    outsider_access,
    one_host,  # noqa: F811
    marathon,  # noqa: F811
    test_images,
):
    backend = {"mode": "container", "name": "backend"}
    deploy(access, app_on(test_images, "/server", instances=2, network=backend))
    servers = wait_until("2 servers running", lambda: len(running("/server")) == 2 and running("/server"))
    addresses = sorted((instance.ip_address for instance in servers), key=ipaddress.IPv4Address)
    target = addresses[-1]  # not 10.1.0.1: tenant B's first VM will hold that one on its own segment
    tasks = marathon.list_tasks("/server")
    assert sorted(task.ip_addresses[0].ip_address for task in tasks) == addresses

    client_cmd = then_sleep(probe_script(target, ping_deadline_s=30, http_timeout_s=20))
    outsider_cmd = then_sleep(probe_script(target, ping_deadline_s=8, http_timeout_s=5))
    deploy(access, app_on(test_images, "/client", network=backend, cmd=client_cmd))
    deploy(outsider_access, app_on(test_images, "/outsider", network={"mode": "container/bridge"}, cmd=outsider_cmd))
    [client] = wait_until("client running", lambda: running("/client"))
    [outsider] = wait_until("outsider running", lambda: running("/outsider"))
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))

    assert probe_lines(runtime, client) == REACHED
    assert probe_lines(runtime, outsider) == NOT_REACHED
    networks = {n.tenant_id: n for n in Network.objects.filter(name__in=["backend", "default"])}
    assert ipaddress.IPv4Address(outsider.ip_address) in ipaddress.IPv4Network(networks[outsider.tenant_id].subnet)
    assert ipaddress.IPv4Address(target) in ipaddress.IPv4Network(networks[outsider.tenant_id].subnet)
    assert outsider.ip_address != target

    for app_id, who in (("/server", access), ("/client", access), ("/outsider", outsider_access)):
        app_delete(access=who, app=App.objects.get(tenant=who.tenant, marathon_id=app_id))
    wait_until("apps gone", lambda: not App.objects.filter(tenant__in=[access.tenant, outsider_access.tenant]).exists())
    assert quota_usage(tenant=access.tenant)["networks"] == quota_usage(tenant=outsider_access.tenant)["networks"] == 0
    assert not Network.objects.filter(tenant__in=[access.tenant, outsider_access.tenant]).exists()


def test_a_killed_vms_network_and_a_stray_one_go_from_the_host_and_default_stays(
    access,  # noqa: F811 (the fixture imported above)
    one_host,  # noqa: F811
    test_images,
):
    """No stop ever runs for a VM whose QEMU died: the reconciler releases its network, and the
    host's sweep removes a tenant network it made that nothing uses (one a crashed worker left);
    libvirt's default network and a network someone else made stay."""
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    default_before = libvirt_networks(runtime)["default"]
    stray, others = (TenantNetwork.for_network_id(str(uuid.uuid4())) for _ in range(2))
    runtime.network_ensure(stray)  # as a boot on this host does; left behind by a crashed worker
    runtime.host.network_ensure(others)  # made by someone else on this libvirtd: never ours to remove
    body = {**app_on(test_images, "/lonely", network={"mode": "container", "name": "lonely"}), "backoffSeconds": 3600}
    deploy(access, body)
    [victim] = wait_until("running", lambda: running("/lonely"))
    network = TenantNetwork.for_network_id(str(Network.objects.get(tenant=access.tenant, name="lonely").pk))
    assert network.libvirt_name in runtime.host.list_networks()

    os.kill(runtime.host.lookup(str(victim.pk)).qemu_pid(), signal.SIGKILL)

    wait_until("marked lost", lambda: Instance.objects.filter(pk=victim.pk, status=InstanceStatus.LOST).exists(), 60)
    wait_until(
        "both networks gone from libvirt",
        lambda: not {network.libvirt_name, stray.libvirt_name} & set(libvirt_networks(runtime)),
        60,
    )
    assert libvirt_networks(runtime)["default"] == default_before  # others' networks are never touched
    assert others.libvirt_name in libvirt_networks(runtime)
    runtime.host.network_remove(others)
    app_delete(access=access, app=App.objects.get(tenant=access.tenant, marathon_id="/lonely"))
    wait_until("app gone", lambda: not App.objects.filter(tenant=access.tenant).exists())


def libvirt_networks(runtime: HyperVMRuntime) -> dict[str, bool]:
    """Every network of the host's libvirtd (not only ours) and whether it is active."""
    import libvirt

    connection = libvirt.open(runtime.settings.libvirt_uri)
    try:
        found = {}
        for network in connection.listAllNetworks(0):
            try:
                found[network.name()] = bool(network.isActive())
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise  # else: another host's sweep removed it between the listing and this look
        return found
    finally:
        connection.close()
