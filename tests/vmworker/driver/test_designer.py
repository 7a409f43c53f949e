"""Designer policy: each decision DomainSpec -> DomainConfig, one test per decision."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from vmworker.driver.config import (
    ChannelConfig,
    ControllerConfig,
    DiskConfig,
    DomainConfig,
    InterfaceConfig,
    MemBalloonConfig,
    SerialConfig,
)
from vmworker.driver.designer import NET_PCI_SLOT, DesignPolicy, design_domain
from vmworker.driver.spec import ChannelSpec, DiskSpec, DomainSpec, InterfaceSpec, PortForward

INSTANCE_ID = "0d8e2a6c-7f55-4b51-9a1c-51f5a1d6e0aa"


def make_spec(**overrides) -> DomainSpec:
    values = dict(
        instance_id=INSTANCE_ID,
        kernel=Path("/k"),
        initrd=Path("/i"),
        cmdline="quiet",
        vcpus=1,
        memory_mib=128,
        console_log=Path("/s/console.log"),
        virt_type="qemu",
    )
    values.update(overrides)
    return DomainSpec(**values)


def test_name_and_uuid_come_from_the_instance() -> None:
    config = design_domain(make_spec(instance_id=INSTANCE_ID.upper()))

    assert (config.name, config.uuid) == (f"hvm-{INSTANCE_ID}", INSTANCE_ID)


def test_the_name_prefix_is_configurable() -> None:
    assert design_domain(make_spec(name_prefix="hvm-probe-")).name == f"hvm-probe-{INSTANCE_ID}"


def test_cmdline_gets_a_serial_console_and_reboot_on_panic_unless_given() -> None:
    assert design_domain(make_spec(cmdline="quiet")).os.cmdline == "quiet console=ttyS0 panic=-1"
    assert design_domain(make_spec(cmdline="console=hvc0 panic=3")).os.cmdline == "console=hvc0 panic=3"


def test_every_lifecycle_end_destroys_the_domain() -> None:
    config = design_domain(make_spec())

    assert (config.on_poweroff, config.on_reboot, config.on_crash) == ("destroy", "destroy", "destroy")


def test_the_console_is_appended_to_the_per_instance_log_file() -> None:
    [serial] = design_domain(make_spec()).devices_of(SerialConfig)

    assert (serial.source.kind, serial.source.path, serial.source.append) == ("file", "/s/console.log", True)


def test_disks_are_virtio_in_order_with_serials_and_readonly_as_asked() -> None:
    spec = make_spec(
        disks=(DiskSpec(Path("/root.erofs"), "hvm-rootfs", True), DiskSpec(Path("/vol.img"), "vol-1", False))
    )

    disks = design_domain(spec).devices_of(DiskConfig)

    assert [(d.target_dev, d.target_bus, d.serial, d.readonly) for d in disks] == [
        ("vda", "virtio", "hvm-rootfs", True),
        ("vdb", "virtio", "vol-1", False),
    ]


def test_channels_are_virtio_serial_ports_file_appended_or_unix_bound() -> None:
    spec = make_spec(
        channels=(
            ChannelSpec("io.hypervm.output", Path("/s/out"), "file"),
            ChannelSpec("io.hypervm.control", Path("/s/c"), "unix"),
        )
    )

    config = design_domain(spec)

    assert ControllerConfig(controller_type="virtio-serial", index=0) in config.devices
    sources = {c.target_name: (c.source.kind, c.source.append, c.source.mode) for c in config.devices_of(ChannelConfig)}
    assert sources == {"io.hypervm.output": ("file", True, None), "io.hypervm.control": ("unix", False, "bind")}


def test_no_usb_no_balloon_and_no_virtio_serial_controller_without_channels() -> None:
    config = design_domain(make_spec())

    assert config.devices_of(MemBalloonConfig) == [MemBalloonConfig(model="none")]
    assert [(c.controller_type, c.model) for c in config.devices_of(ControllerConfig)] == [("usb", "none")]


def test_without_published_ports_there_is_no_nic_at_all() -> None:
    assert design_domain(make_spec()).qemu_commandline is None


def test_published_ports_are_restricted_user_net_forwards_on_a_fixed_pci_slot() -> None:
    spec = make_spec(port_forwards=(PortForward("127.0.0.1", 18080, 80), PortForward("0.0.0.0", 5353, 53, "udp")))

    args = design_domain(spec).qemu_commandline.args

    assert args == (
        "-netdev",
        "user,id=hvmnet0,restrict=on,hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=udp:0.0.0.0:5353-:53",
        "-device",
        f"virtio-net-pci,netdev=hvmnet0,addr={NET_PCI_SLOT:#x},romfile=",
    )


def test_a_tenant_network_nic_is_a_libvirt_network_interface_and_the_user_nic_gets_its_mac() -> None:
    spec = make_spec(
        port_forwards=(PortForward("127.0.0.1", 18080, 80),),
        user_net_mac="02:00:00:00:00:0a",
        interfaces=(InterfaceSpec(network="hvm-tnet-x", mac="02:00:00:00:00:0b"),),
    )

    config = design_domain(spec)

    assert config.devices_of(InterfaceConfig) == [
        InterfaceConfig(network="hvm-tnet-x", mac="02:00:00:00:00:0b", model="virtio", driver="qemu", rom_enabled=False)
    ]
    assert config.qemu_commandline.args[-1].endswith(",romfile=,mac=02:00:00:00:00:0a")
    xml = config.to_xml()
    assert "<forward" not in xml and "network='default'" not in xml and 'network="default"' not in xml
    assert DomainConfig.parse_str(xml).devices_of(InterfaceConfig) == config.devices_of(InterfaceConfig)


def test_too_many_pci_devices_for_the_nic_slot_are_refused() -> None:
    disks = tuple(DiskSpec(Path(f"/d{i}"), f"d{i}", True) for i in range(NET_PCI_SLOT))

    with pytest.raises(ValueError, match="PCI"):
        design_domain(make_spec(disks=disks))


@pytest.mark.parametrize(("quota_pct", "quota_us"), [(50, 50_000), (200, 200_000), (1, 1_000)])
def test_cpu_quota_is_cfs_bandwidth_per_vcpu(quota_pct: int, quota_us: int) -> None:
    cputune = design_domain(make_spec(cpu_quota_pct=quota_pct)).cputune

    assert (cputune.period_us, cputune.quota_us) == (100_000, quota_us)


def test_no_cpu_quota_means_no_cputune() -> None:
    assert design_domain(make_spec(cpu_quota_pct=None)).cputune is None


def test_tcg_bounds_its_translation_cache_and_kvm_passes_the_host_cpu_through() -> None:
    tcg = design_domain(make_spec(virt_type="qemu"))
    kvm = design_domain(make_spec(virt_type="kvm"))

    assert (tcg.features.tcg_tb_cache_mib, tcg.cpu) == (32, None)
    assert (kvm.features.tcg_tb_cache_mib, kvm.cpu.mode) == (None, "host-passthrough")


def test_the_machine_type_is_a_host_policy() -> None:
    assert design_domain(make_spec()).os.machine == "pc"
    assert design_domain(make_spec(), DesignPolicy(machine_type="q35")).os.machine == "q35"


def test_metadata_always_carries_the_instance_uuid() -> None:
    config = design_domain(make_spec(metadata={"tenant": "acme"}))

    assert config.metadata.values == {"tenant": "acme", "instance": INSTANCE_ID}


@pytest.mark.parametrize(
    "bad",
    [
        {"instance_id": "not-a-uuid"},
        {"virt_type": "xen"},
        {"vcpus": 0},
        {"memory_mib": 8},
        {"cpu_quota_pct": 0},
        {"metadata": {"Bad Key": "x"}},
    ],
)
def test_invalid_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        make_spec(**bad)


def test_channel_kind_and_port_values_are_checked() -> None:
    with pytest.raises(ValueError):
        ChannelSpec("x", Path("/x"), "pty")
    with pytest.raises(ValueError):
        PortForward("127.0.0.1", 0, 80)


def test_specs_are_values() -> None:
    spec = make_spec()

    assert dataclasses.replace(spec) == spec
    assert spec.domain_name == f"hvm-{uuid.UUID(INSTANCE_ID)}"
