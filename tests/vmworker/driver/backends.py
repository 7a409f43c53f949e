"""The driver implementations the contract suite runs against, and the guests they boot."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmworker.driver.fake import FakeHost
from vmworker.driver.host import Host
from vmworker.driver.spec import ChannelSpec, DiskSpec, DomainSpec
from vmworker.network.tenant import TenantNetwork

TEST_NAME_PREFIX = "hvm-drvtest-"
SENTINEL = "HYPERVM-DRVTEST-UP"
BUSYBOX = Path("/bin/busybox")

INIT_POWEROFF = f"#!/bin/busybox sh\n/bin/busybox echo {SENTINEL}\n/bin/busybox poweroff -f\n"
# Stays up (idle) until destroyed: what a running HyperVM looks like to the driver.
INIT_STAY_UP = f"#!/bin/busybox sh\n/bin/busybox echo {SENTINEL}\nexec /bin/busybox sleep 3600\n"


InitramfsFactory = Callable[..., Path]


@dataclass
class Backend:
    """One driver implementation plus how to play the parts the contract needs around it."""

    kind: str  # "fake" | "test" | "qemu"
    host: Host | FakeHost
    workdir: Path
    kernel: Path
    initramfs: InitramfsFactory
    instance_ids: list[str] = field(default_factory=list)
    foreign_uuids: list[str] = field(default_factory=list)
    networks: list[TenantNetwork] = field(default_factory=list)

    @property
    def boots_real_vms(self) -> bool:
        return self.kind == "qemu"

    def spec(self, *, init_script: str = INIT_STAY_UP, **overrides) -> DomainSpec:
        instance_id = overrides.pop("instance_id", None) or str(uuid.uuid4())
        self.instance_ids.append(instance_id)
        rootfs = self.workdir / "rootfs.img"
        if not rootfs.exists():
            rootfs.write_bytes(b"\0" * 1024 * 1024)
            rootfs.chmod(0o644)
        values = dict(
            instance_id=instance_id,
            kernel=self.kernel,
            initrd=overrides.pop("initrd", None) or self.initramfs(init_script),
            cmdline="quiet",
            vcpus=1,
            memory_mib=128,
            console_log=self.workdir / f"{instance_id}.console.log",
            virt_type="qemu",
            disks=(DiskSpec(path=rootfs, serial="hvm-rootfs", readonly=True),),
            channels=(
                ChannelSpec(name="io.hypervm.out", path=self.workdir / f"{instance_id}.out", kind="file"),
                ChannelSpec(name="io.hypervm.control", path=self.workdir / f"{instance_id}.sock", kind="unix"),
            ),
            metadata={"tenant": "tenant-a", "app": "web"},
            name_prefix=TEST_NAME_PREFIX,
        )
        values.update(overrides)
        return DomainSpec(**values)

    def tenant_network(self) -> TenantNetwork:
        """A fresh tenant network name (removed again by cleanup)."""
        network = TenantNetwork.for_network_id(str(uuid.uuid4()))
        self.networks.append(network)
        return network

    def define_foreign_domain(self, *, name: str | None = None, domain_uuid: str | None = None) -> str:
        """A persistent, stopped domain WITHOUT our metadata, made behind the driver's back."""
        domain_uuid = domain_uuid or str(uuid.uuid4())
        name = name or f"{TEST_NAME_PREFIX}foreign-{domain_uuid[:8]}"
        xml = f"""<domain type='qemu'>
  <name>{name}</name><uuid>{domain_uuid}</uuid><memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type><kernel>{self.kernel}</kernel></os>
</domain>"""
        self.foreign_uuids.append(domain_uuid)
        if isinstance(self.host, FakeHost):
            return self.host.define_foreign_domain(xml, running=False)
        import libvirt  # the driver's own code never lets this out; a test may play "someone else"

        # test:///default keeps its state only while a connection is open: open the driver's first.
        self.host.list_guests()
        connection = libvirt.open(self.host.uri)
        try:
            connection.defineXML(xml)
        finally:
            connection.close()
        return domain_uuid

    def cleanup(self) -> None:
        for instance_id in self.instance_ids + self.foreign_uuids:
            guest = self.host.lookup(instance_id)
            if guest is not None:
                guest.destroy()
                guest.undefine()
        for network in self.networks:
            self.host.network_remove(network, only_if_unused=False)
        self.host.close()


def make_backend(kind: str, workdir: Path, kernel: Path, initramfs: InitramfsFactory) -> Backend:
    if kind == "fake":
        host: Host | FakeHost = FakeHost()
    elif kind == "test":
        host = Host("test:///default")
    else:
        host = Host("qemu:///system")
    return Backend(kind=kind, host=host, workdir=workdir, kernel=kernel, initramfs=initramfs)
