"""DomainSpec -> config objects. Every policy decision about a HyperVM's domain lives here.

Contract: ``design_domain(spec)`` returns a ``DomainConfig`` whose XML libvirt 9.0 accepts for
``qemu:///system`` (TCG or KVM). Decisions, and why:

- machine ``pc`` (i440fx): under TCG with direct kernel boot it reaches the console sentinel as
  fast as q35 or faster (medians of two runs of 5, bench/bench_driver_boot.py: bzImage 3.86-4.07
  vs 4.20-4.26 s, PVH vmlinux 3.13-3.20 vs 3.16-3.42 s) and needs no PCIe root ports, so libvirt's
  slot assignment stays simple (0x02 upwards on pci.0). ``microvm`` boots, but libvirt 9.0 cannot give it virtio-pci
  devices ("No PCI buses available"), so it is not an option.
- direct kernel boot (kernel + initrd + cmdline); ``console=ttyS0`` and ``panic=-1`` are added
  when missing so a panicking guest reboots, which ``on_reboot=destroy`` turns into "gone".
- the serial console is a ``<serial type='file' append='on'>``: with qemu.conf's default
  ``stdio_handler = "logd"`` libvirt backs every file chardev (this one and the log port's
  channel) with virtlogd, so QEMU writes into a pipe and virtlogd appends to the file and rotates
  it (max_size 2 MiB, max_backups 3 by default: console.log.0 ...). It keeps earlier boots, needs
  no worker process (it survives a worker restart), and bounds what a guest can put on the
  host's disk (vmworker.log_files).
- disks are virtio-blk, read-only when asked, each with a ``<serial>`` the guest finds it by.
- channels are virtio-serial ports: ``file`` (host reads what the guest appended) or ``unix``
  ``mode='bind'`` (libvirt listens, the host connects).
- no USB, no graphics/video, no memballoon, no default network: less QEMU memory, nothing to
  reach outside. No ``<memtune>`` hard limit (RLIMIT_MEMLOCK of 8 MiB on dev hosts breaks it).
- CPU cap through ``<cputune>`` period/quota (CFS bandwidth, per vcpu).
- published ports: libvirt 9.0 has no passt backend, so QEMU user networking with host
  forwards is passed through ``<qemu:commandline>``, restricted (``restrict=on``) so the guest
  reaches nothing but its forwards; the NIC gets an explicit PCI slot (``NET_PCI_SLOT``) far
  above the ones libvirt hands out, and no NIC at all when there are no ports. With a tenant
  network too, it gets a fixed MAC (``user_net_mac``) so the guest init tells the NICs apart.
- tenant networks (``vmworker.network``): ``<interface type='network'>`` on the isolated
  libvirt network, virtio, with the instance's MAC (the guest init picks the interface by it).
  ``<driver name='qemu'>``: userspace virtio-net, so the domain does not depend on
  /dev/vhost-net (dev/CI hosts have none); no option ROM, as for the user-net NIC.
- TCG: the translation-block cache is bounded (``<tcg><tb-cache>``, 32 MiB): QEMU reserves
  1 GiB and an idle guest had ~40 MiB of it resident; 32 MiB saved ~10 MiB RSS per VM.
- on_poweroff/on_reboot/on_crash all ``destroy``: a HyperVM is never rebooted in place.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    InterfaceConfig,
    MemBalloonConfig,
    OSConfig,
    QemuCommandlineConfig,
    RngConfig,
    SerialConfig,
)
from vmworker.driver.spec import DomainSpec, PortForward

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses smaller CFS quotas
NET_PCI_SLOT = 0x10
# libvirt assigns PCI slots from 0x02 upwards on i440fx; stay clear of the NIC's slot.
MAX_AUTO_PCI_DEVICES = NET_PCI_SLOT - 0x02
NET_ID = "hvmnet0"
METADATA_INSTANCE_KEY = "instance"
# A pooled VM (vmworker.warm_pool) carries pool=blank until it is claimed, then pool=claimed
# and instance=<the instance it became>.
POOL_METADATA_KEY = "pool"
POOL_BLANK = "blank"
POOL_CLAIMED = "claimed"


@dataclass(frozen=True)
class DesignPolicy:
    """Host-wide knobs (settings), as opposed to per-instance values in DomainSpec."""

    machine_type: str = "pc"
    tcg_tb_cache_mib: int | None = 32  # measured: 64 -> 32 MiB saves ~10 MiB RSS, boot +0.1 s
    with_rng: bool = False  # virtio-rng: a 6.1 kernel does not need it to boot
    kvm_cpu_mode: str | None = "host-passthrough"  # None: QEMU's default model


def design_domain(spec: DomainSpec, policy: DesignPolicy | None = None) -> DomainConfig:
    policy = policy or DesignPolicy()
    config = DomainConfig(
        virt_type=spec.virt_type,
        name=spec.domain_name,
        uuid=spec.instance_id,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        os=OSConfig(
            machine=policy.machine_type,
            kernel=str(spec.kernel),
            initrd=str(spec.initrd),
            cmdline=kernel_cmdline(spec.cmdline),
        ),
        features=FeaturesConfig(
            names=("acpi", "apic"),  # ACPI: how `poweroff -f` actually powers the VM off
            tcg_tb_cache_mib=(spec.tcg_tb_cache_mib or policy.tcg_tb_cache_mib) if spec.virt_type == "qemu" else None,
        ),
        cpu=CPUConfig(mode=policy.kvm_cpu_mode, check="none")
        if spec.virt_type == "kvm" and policy.kvm_cpu_mode
        else None,
        cputune=cputune_for(spec.cpu_quota_pct),
        metadata=InstanceMetadataConfig(values={**spec.metadata, METADATA_INSTANCE_KEY: spec.instance_id}),
        on_poweroff="destroy",
        on_reboot="destroy",
        on_crash="destroy",
    )
    config.devices.append(ControllerConfig(controller_type="usb", index=0, model="none"))
    for index, disk in enumerate(spec.disks):
        config.devices.append(
            DiskConfig(
                source_path=str(disk.path),
                target_dev=virtio_disk_name(index),
                target_bus="virtio",
                driver_format=disk.format,
                readonly=disk.readonly,
                serial=disk.serial,
            )
        )
    config.devices.append(
        SerialConfig(
            source=CharSourceConfig(kind="file", path=str(spec.console_log), append=True),
            target_port=0,
        )
    )
    if spec.channels:
        config.devices.append(ControllerConfig(controller_type="virtio-serial", index=0))
    for channel in spec.channels:
        if channel.kind == "file":
            source = CharSourceConfig(kind="file", path=str(channel.path), append=True)
        else:
            source = CharSourceConfig(kind="unix", path=str(channel.path), mode="bind")
        config.devices.append(ChannelConfig(source=source, target_name=channel.name))
    if policy.with_rng:
        config.devices.append(RngConfig())
    for interface in spec.interfaces:
        config.devices.append(
            InterfaceConfig(network=interface.network, mac=interface.mac, driver="qemu", rom_enabled=False)
        )
    config.devices.append(MemBalloonConfig(model="none"))
    auto_pci_devices = len(spec.disks) + bool(spec.channels) + policy.with_rng + len(spec.interfaces)
    if auto_pci_devices > MAX_AUTO_PCI_DEVICES:
        raise ValueError(f"{auto_pci_devices} PCI devices would reach the NIC's slot {NET_PCI_SLOT:#x}")
    if spec.port_forwards or spec.user_net:
        config.qemu_commandline = QemuCommandlineConfig(args=user_net_args(spec.port_forwards, spec.user_net_mac))
    return config


def kernel_cmdline(requested: str) -> str:
    words = requested.split()
    if not any(word.startswith("console=") for word in words):
        words.append("console=ttyS0")
    if not any(word.startswith("panic=") for word in words):
        words.append("panic=-1")
    return " ".join(words)


def cputune_for(cpu_quota_pct: int | None) -> CPUTuneConfig | None:
    """``cpu_quota_pct`` is a share of one host CPU per vcpu (100 = a full core each)."""
    if cpu_quota_pct is None:
        return None
    quota_us = max(MIN_CPU_QUOTA_US, CPU_PERIOD_US * cpu_quota_pct // 100)
    return CPUTuneConfig(period_us=CPU_PERIOD_US, quota_us=quota_us)


def virtio_disk_name(index: int) -> str:
    if index >= 26:
        raise ValueError("at most 26 disks")
    return "vd" + chr(ord("a") + index)


def user_net_args(port_forwards: tuple[PortForward, ...], mac: str | None = None) -> tuple[str, ...]:
    """QEMU user networking (guest 10.0.2.15/24, gateway 10.0.2.2) with host forwards only."""
    forwards = "".join(
        f",hostfwd={forward.protocol}:{forward.host_ip}:{forward.host_port}-:{forward.guest_port}"
        for forward in port_forwards
    )
    return (
        "-netdev",
        f"user,id={NET_ID},restrict=on{forwards}",
        "-device",
        # romfile= : no iPXE option ROM, we never network-boot (saves time and memory).
        f"virtio-net-pci,netdev={NET_ID},addr={NET_PCI_SLOT:#x},romfile=" + (f",mac={mac}" if mac else ""),
    )
