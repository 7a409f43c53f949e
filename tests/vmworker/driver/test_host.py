"""Host specifics: connection failures, reconnecting after a drop, lifecycle events."""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest

from tests.vmworker.driver.backends import SENTINEL, Backend
from vmworker.driver.errors import ConnectionFailed
from vmworker.driver.host import Host
from vmworker.driver.probe import wait_for_console_text


def test_an_unreachable_libvirtd_is_a_clear_connection_error() -> None:
    host = Host("qemu+unix:///system?socket=/nonexistent/libvirt-sock")

    with pytest.raises(ConnectionFailed, match="cannot connect to libvirt at qemu\\+unix"):
        host.list_guests()


def test_the_test_drivers_own_running_domain_is_not_listed_as_ours() -> None:
    host = Host("test:///default")
    try:
        # test:///default always holds a running domain named "test" that we did not make.
        assert host.capabilities().virt_types == ("test",)
        assert "test" not in {guest.name for guest in host.list_guests()}
    finally:
        host.close()


def _our_libvirtd_client_ids() -> list[str]:
    listing = subprocess.run(
        ["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    ours = []
    for client_id in re.findall(r"^\s*(\d+)\s", listing, flags=re.MULTILINE):
        info = subprocess.run(
            ["virt-admin", "client-info", "libvirtd", client_id], capture_output=True, text=True, timeout=10
        ).stdout
        if re.search(rf"^\s*unix_process_id\s*:\s*{os.getpid()}\s*$", info, flags=re.MULTILINE):
            ours.append(client_id)
    return ours


@pytest.mark.vm
def test_the_host_reconnects_after_libvirtd_drops_its_connection() -> None:
    host = Host("qemu:///system")
    try:
        host.list_guests()
        client_ids = _our_libvirtd_client_ids()
        assert client_ids, "our connection should be listed by virt-admin"
        for client_id in client_ids:
            subprocess.run(["virt-admin", "client-disconnect", "libvirtd", client_id], check=True, timeout=10)

        host.list_guests()  # must not raise: the Host notices the drop and reconnects

        assert _our_libvirtd_client_ids() and set(_our_libvirtd_client_ids()).isdisjoint(client_ids)
    finally:
        host.close()


@pytest.mark.vm
def test_lifecycle_events_arrive_for_our_domains(qemu_backend: Backend) -> None:
    events: list[tuple[str, str]] = []
    stopped = threading.Event()

    spec = qemu_backend.spec()

    def record(instance_id: str, event: str) -> None:
        events.append((instance_id, event))
        if (instance_id, event) == (spec.instance_id, "stopped"):  # other VMs may run on this host
            stopped.set()

    qemu_backend.host.register_lifecycle_callback(record)
    guest = qemu_backend.host.define_and_start(spec)
    assert wait_for_console_text(spec.console_log, SENTINEL, timeout_s=30) is not None

    guest.destroy()

    assert stopped.wait(timeout=10)
    ours = [event for instance_id, event in events if instance_id == spec.instance_id]
    # libvirt may report "shutdown" after "stopped" when a domain is destroyed: no order asserted.
    assert {"started", "stopped"} <= set(ours)
