"""Real VMs on tenant networks (libvirtd + QEMU): two VMs of one network reach each other by
their IPAM addresses; a VM on another tenant's network, given an address in the SAME subnet (so
it has a route and only L2 isolation can stop it), reaches neither. Pings are bounded (count and
deadline) and go only to these test VMs' addresses; the host has no address on the bridges."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.support.network_probe import NOT_REACHED, REACHED, probe_results, probe_script
from vmworker.cli import credentials_from_authfile
from vmworker.driver.host import Host
from vmworker.guestinit.protocol import OutputLine
from vmworker.network.tenant import NetworkAttachment, NetworkConfig, TenantNetwork, instance_mac
from vmworker.runtime import InstanceSpec

pytestmark = pytest.mark.vm

SERVER_ADDRESS = "10.1.0.1"
EXIT_WAIT_S = 180


@pytest.fixture
def tenant_networks():
    """Two tenant networks (tenant A's, tenant B's) on this host, removed afterwards."""
    host = Host("qemu:///system")
    networks = [TenantNetwork.for_network_id(str(uuid.uuid4())) for _ in range(2)]
    yield networks
    for network in networks:
        host.network_remove(network, only_if_unused=False)
    host.close()


def attached(network: TenantNetwork, instance_id: str, address: str) -> NetworkAttachment:
    return NetworkAttachment(network=network, mac=instance_mac(instance_id, "tenant"), ip_cidr=f"{address}/24")


def boot_on(runtime, image, authfile, network, address, **overrides) -> str:
    instance_id = str(uuid.uuid4())
    runtime.boot(
        InstanceSpec(
            image=image.reference,
            instance_id=instance_id,
            credentials=credentials_from_authfile(authfile, image.reference),
            tls_verify=False,
            memory_mib=128,
            network=attached(network, instance_id, address),
            **overrides,
        )
    )
    return instance_id


def probe_output(runtime, instance_id: str) -> list[str]:
    deadline = time.monotonic() + EXIT_WAIT_S
    while runtime.status(instance_id).exit_code is None:
        assert time.monotonic() < deadline, runtime.console_tail(instance_id)
        time.sleep(0.5)
    return probe_results([record.text for record in runtime.records(instance_id) if isinstance(record, OutputLine)])


def probe(target: str, *, ping_deadline_s: int, http_timeout_s: int) -> tuple[str, ...]:
    script = probe_script(target, ping_deadline_s=ping_deadline_s, http_timeout_s=http_timeout_s)
    return ("/bin/busybox", "sh", "-c", script)


def test_vms_of_one_tenant_network_reach_each_other_and_another_tenants_vm_reaches_neither(
    runtime, test_images, registry_authfile, tenant_networks
):
    network_a, network_b = tenant_networks
    httpd = test_images["httpd"]
    server = boot_on(runtime, httpd, registry_authfile, network_a, SERVER_ADDRESS)
    neighbour = boot_on(
        runtime,
        httpd,
        registry_authfile,
        network_a,
        "10.1.0.2",
        entrypoint=probe(SERVER_ADDRESS, ping_deadline_s=30, http_timeout_s=20),
    )
    # Tenant B's VM: same subnet, an address of its own, another segment.
    outsider = boot_on(
        runtime,
        httpd,
        registry_authfile,
        network_b,
        "10.1.0.3",
        entrypoint=probe(SERVER_ADDRESS, ping_deadline_s=8, http_timeout_s=5),
    )

    assert probe_output(runtime, neighbour) == REACHED
    assert probe_output(runtime, outsider) == NOT_REACHED
    assert runtime.status(server).state == "running"


def test_a_tenant_network_is_a_bare_bridge_without_host_address_or_uplink(tenant_networks):
    host = Host("qemu:///system")
    network = tenant_networks[0]
    try:
        host.network_ensure(network)
        xml = subprocess.run(
            ["virsh", "-c", "qemu:///system", "net-dumpxml", network.libvirt_name],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        addresses = subprocess.run(
            ["ip", "-o", "addr", "show", "dev", network.bridge], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    finally:
        host.close()
    assert NetworkConfig.parse_str(xml) == NetworkConfig(name=network.libvirt_name, bridge=network.bridge)
    assert " inet " not in addresses  # IPv4: none; the host is not on the segment
