"""Config objects: golden XML for designed domains, and every element reads back as rendered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmworker.driver.config import (
    ChannelConfig,
    CharSourceConfig,
    ControllerConfig,
    CPUConfig,
    CPUTuneConfig,
    DiskConfig,
    DomainConfig,
    FeaturesConfig,
    InstanceMetadataConfig,
    LogConfig,
    MemBalloonConfig,
    OSConfig,
    QemuCommandlineConfig,
    RngConfig,
    SerialConfig,
    VideoConfig,
    canonical_xml,
)
from vmworker.driver.designer import design_domain
from vmworker.driver.spec import ChannelSpec, DiskSpec, DomainSpec, PortForward

GOLDEN_DIR = Path(__file__).parent / "golden"
# Set to rewrite the golden files after an intended change; review the diff before committing.
UPDATE_GOLDEN = os.environ.get("HYPERVM_UPDATE_GOLDEN") == "1"

INSTANCE_ID = "5f0c3d52-3a1e-4a9e-9d52-0b6c2a7f1e01"
STATE = Path("/var/lib/hypervm/instances") / INSTANCE_ID

GOLDEN_SPECS = {
    "domain_tcg_full.xml": DomainSpec(
        instance_id=INSTANCE_ID,
        kernel=Path("/boot/vmlinuz-6.1.0-56-cloud-amd64"),
        initrd=Path("/var/lib/hypervm/initramfs/3f2a.cpio"),
        cmdline="quiet hypervm.config=hvm-config",
        vcpus=2,
        memory_mib=256,
        cpu_quota_pct=50,
        console_log=STATE / "console.log",
        virt_type="qemu",
        disks=(
            DiskSpec(path=Path("/var/lib/hypervm/images/sha256-ab12.erofs"), serial="hvm-rootfs", readonly=True),
            DiskSpec(path=STATE / "config.img", serial="hvm-config", readonly=True),
        ),
        channels=(
            ChannelSpec(name="io.hypervm.output", path=STATE / "output.log", kind="file"),
            ChannelSpec(name="io.hypervm.control", path=STATE / "control.sock", kind="unix"),
        ),
        port_forwards=(
            PortForward(host_ip="127.0.0.1", host_port=18080, guest_port=8080),
            PortForward(host_ip="127.0.0.1", host_port=15353, guest_port=53, protocol="udp"),
        ),
        metadata={"tenant": "acme", "app": "/shop/web"},
    ),
    "domain_kvm_minimal.xml": DomainSpec(
        instance_id=INSTANCE_ID,
        kernel=Path("/boot/vmlinuz-6.1.0-56-cloud-amd64"),
        initrd=Path("/var/lib/hypervm/initramfs/3f2a.cpio"),
        cmdline="console=hvc0 panic=5",
        vcpus=1,
        memory_mib=128,
        console_log=STATE / "console.log",
        virt_type="kvm",
    ),
}


@pytest.mark.parametrize("golden_name", sorted(GOLDEN_SPECS))
def test_designed_domain_matches_golden_xml(golden_name: str) -> None:
    rendered = design_domain(GOLDEN_SPECS[golden_name]).to_xml()
    golden_path = GOLDEN_DIR / golden_name
    if UPDATE_GOLDEN:
        golden_path.write_text(rendered + "\n")

    assert canonical_xml(rendered) == canonical_xml(golden_path.read_text())


@pytest.mark.parametrize("golden_name", sorted(GOLDEN_SPECS))
def test_golden_xml_parses_back_to_the_designed_objects(golden_name: str) -> None:
    designed = design_domain(GOLDEN_SPECS[golden_name])

    assert DomainConfig.parse_str((GOLDEN_DIR / golden_name).read_text()) == designed


ELEMENTS = [
    OSConfig(machine="q35", kernel="/k", initrd="/i", cmdline="a=b"),
    FeaturesConfig(names=("acpi", "apic"), tcg_tb_cache_mib=32),
    CPUConfig(mode="host-passthrough", check="none"),
    CPUConfig(mode="custom", model="qemu64"),
    CPUTuneConfig(period_us=100000, quota_us=25000),
    InstanceMetadataConfig(values={"tenant": "t", "instance": "i"}),
    DiskConfig(source_path="/d.img", target_dev="vdb", driver_format="qcow2", readonly=False, serial="s1"),
    SerialConfig(source=CharSourceConfig(kind="file", path="/c.log", append=True)),
    SerialConfig(source=CharSourceConfig(kind="pty"), log=LogConfig(file="/c.log", append=True)),
    ChannelConfig(source=CharSourceConfig(kind="unix", path="/s.sock", mode="bind"), target_name="org.x.y"),
    ControllerConfig(controller_type="usb", index=0, model="none"),
    MemBalloonConfig(),
    RngConfig(),
    VideoConfig(),
    QemuCommandlineConfig(args=("-netdev", "user,id=n0")),
]


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda element: type(element).__name__)
def test_each_element_parses_back_to_itself(element) -> None:
    assert type(element).parse_dom(element.format_dom()) == element


LIBVIRT_STYLE_XML = """<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>hvm-x</name>
  <uuid>5f0c3d52-3a1e-4a9e-9d52-0b6c2a7f1e01</uuid>
  <metadata>
    <hvm:hypervm xmlns:hvm="http://hypervm.io/xmlns/instance/1.0"><hvm:tenant>acme</hvm:tenant></hvm:hypervm>
    <other:thing xmlns:other="http://example.com/other"/>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource><partition>/machine</partition></resource>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/k</kernel><boot dev='hd'/></os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/r' index='1'/>
      <target dev='vda' bus='virtio'/><readonly/><serial>hvm-rootfs</serial>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></disk>
    <input type='mouse' bus='ps2'/>
    <console type='file'><source path='/c.log' append='on'/><target type='serial' port='0'/></console>
  </devices>
  <qemu:commandline><qemu:arg value='-S'/></qemu:commandline>
</domain>"""


def test_libvirt_output_parses_and_unknown_elements_are_skipped() -> None:
    config = DomainConfig.parse_str(LIBVIRT_STYLE_XML)

    assert (config.virt_type, config.name, config.memory_mib, config.vcpus) == ("kvm", "hvm-x", 256, 2)
    assert config.os.machine == "pc-i440fx-7.2"
    assert config.metadata == InstanceMetadataConfig(values={"tenant": "acme"})
    [disk] = config.devices
    assert (disk.serial, disk.readonly, disk.source_path) == ("hvm-rootfs", True, "/r")
    assert config.qemu_commandline.args == ("-S",)


def test_metadata_reads_the_same_without_its_namespace() -> None:
    # virDomainGetMetadata returns the element with the namespace stripped.
    assert InstanceMetadataConfig.parse_str("<hypervm><tenant>acme</tenant></hypervm>").values == {"tenant": "acme"}


def test_a_non_domain_document_is_refused() -> None:
    with pytest.raises(ValueError, match="expected <domain>"):
        DomainConfig.parse_str("<network/>")
