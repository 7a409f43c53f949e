"""A published port: 127.0.0.1:<free port> on the host reaches busybox httpd inside a real VM.

The NIC comes from the designer's ``<qemu:commandline>`` user-net forward; the guest brings up
eth0 itself (virtio_net is a module in the cloud kernel: loaded in modules.dep order).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.vmworker.driver.backends import SENTINEL, Backend
from vmworker.driver.probe import wait_for_console_text
from vmworker.driver.spec import PortForward

# modules.dep order for virtio_net on the cloud kernel (nothing of it is built in).
NET_MODULES = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
)
PAGE = "served-from-inside-the-hypervm"
GUEST_PORT = 8080

HTTPD_INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
for m in {" ".join(Path(module).stem for module in NET_MODULES)}; do
  $B insmod /lib/modules/$m.ko || $B echo "insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do $B sleep 0.1; i=$((i+1)); done
$B ip link set lo up
$B ip addr add 10.0.2.15/24 dev eth0
$B ip link set eth0 up
$B ip route add default via 10.0.2.2
$B mkdir -p /www
$B echo {PAGE} > /www/index.html
$B httpd -p {GUEST_PORT} -h /www
$B echo {SENTINEL}
exec $B sleep 3600
"""


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch_with_retries(url: str, *, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last_error = error  # slirp accepts then drops until the guest's httpd listens
            time.sleep(0.2)
    raise AssertionError(f"{url} not served within {timeout_s} s: {last_error}")


@pytest.mark.vm
def test_a_published_port_serves_the_page_from_inside_the_vm(qemu_backend: Backend, guest_kernel: Path) -> None:
    modules_root = Path("/lib/modules") / guest_kernel.name.removeprefix("vmlinuz-")
    initrd = qemu_backend.initramfs(HTTPD_INIT, tuple(modules_root / module for module in NET_MODULES))
    host_port = free_loopback_port()
    spec = qemu_backend.spec(
        initrd=initrd, port_forwards=(PortForward(host_ip="127.0.0.1", host_port=host_port, guest_port=GUEST_PORT),)
    )

    started = time.monotonic()
    qemu_backend.host.define_and_start(spec)
    page = fetch_with_retries(f"http://127.0.0.1:{host_port}/", timeout_s=60)
    served_s = time.monotonic() - started

    assert page.strip() == PAGE
    assert wait_for_console_text(spec.console_log, SENTINEL, timeout_s=1) is not None
    print(f"page served {served_s:.2f} s after define_and_start")
