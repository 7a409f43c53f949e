"""libvirt domain XML as config objects: one small class per element we use.

Contract: each class only renders itself (``format_dom``) and reads itself back (``parse_dom``);
no class decides anything (that is ``designer.py``). ``DomainConfig.parse_str`` accepts both what
we render and what libvirt returns from ``XMLDesc`` (unknown elements are skipped), so the fake
driver and tests can read a domain back into the same objects. Rendering is deterministic, so
tests compare it to golden files after XML canonicalisation.

Namespaces: our metadata lives under ``HYPERVM_NAMESPACE`` (prefix ``hvm``); QEMU pass-through
arguments under libvirt's QEMU namespace (prefix ``qemu``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import ClassVar

HYPERVM_NAMESPACE = "http://hypervm.io/xmlns/instance/1.0"
HYPERVM_PREFIX = "hvm"
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
QEMU_PREFIX = "qemu"

ET.register_namespace(HYPERVM_PREFIX, HYPERVM_NAMESPACE)
ET.register_namespace(QEMU_PREFIX, QEMU_NAMESPACE)

_MEMORY_UNIT_TO_KIB = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "kb": 1000 / 1024,
    "m": 1024,
    "mib": 1024,
    "mb": 1000**2 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "gb": 1000**3 / 1024,
}


def _qname(namespace: str, tag: str) -> str:
    return f"{{{namespace}}}{tag}"


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def memory_mib_from_element(element: ET.Element) -> int:
    unit = element.get("unit", "KiB").lower()
    kib = int(element.text or "0") * _MEMORY_UNIT_TO_KIB[unit]
    return int(kib // 1024)


class ConfigObject:
    """Base: an element that can render itself and be read back."""

    root_name: ClassVar[str]

    def format_dom(self) -> ET.Element:
        raise NotImplementedError

    def to_xml(self, *, pretty: bool = True) -> str:
        element = self.format_dom()
        if pretty:
            ET.indent(element)
        return ET.tostring(element, encoding="unicode")


# --- <os> ---------------------------------------------------------------------------------


@dataclass
class OSConfig(ConfigObject):
    root_name: ClassVar[str] = "os"
    os_type: str = "hvm"
    arch: str = "x86_64"
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("os")
        type_attrs = {"arch": self.arch}
        if self.machine:
            type_attrs["machine"] = self.machine
        _sub(root, "type", self.os_type, **type_attrs)
        for tag in ("kernel", "initrd", "cmdline"):
            value = getattr(self, tag)
            if value is not None:
                _sub(root, tag, value)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> OSConfig:
        type_element = element.find("type")
        config = cls()
        if type_element is not None:
            config.os_type = type_element.text or "hvm"
            config.arch = type_element.get("arch", "x86_64")
            config.machine = type_element.get("machine")
        for tag in ("kernel", "initrd", "cmdline"):
            found = element.find(tag)
            if found is not None:
                setattr(config, tag, found.text or "")
        return config


# --- <features> ----------------------------------------------------------------------------


@dataclass
class FeaturesConfig(ConfigObject):
    """Flag features (``<acpi/>``, ``<apic/>``) and TCG's translation cache size."""

    root_name: ClassVar[str] = "features"
    names: tuple[str, ...] = ()
    tcg_tb_cache_mib: int | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("features")
        for name in self.names:
            _sub(root, name)
        if self.tcg_tb_cache_mib is not None:
            tcg = _sub(root, "tcg")
            _sub(tcg, "tb-cache", str(self.tcg_tb_cache_mib), unit="MiB")
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> FeaturesConfig:
        config = cls(names=tuple(child.tag for child in element if len(child) == 0))
        tb_cache = element.find("tcg/tb-cache")
        if tb_cache is not None:
            config.tcg_tb_cache_mib = memory_mib_from_element(tb_cache)
        return config


# --- <cpu> ---------------------------------------------------------------------------------


@dataclass
class CPUConfig(ConfigObject):
    root_name: ClassVar[str] = "cpu"
    mode: str | None = None  # "host-passthrough" | "host-model" | "custom"
    model: str | None = None
    check: str | None = None

    def format_dom(self) -> ET.Element:
        attrs = {}
        if self.mode:
            attrs["mode"] = self.mode
        if self.check:
            attrs["check"] = self.check
        root = ET.Element("cpu", attrs)
        if self.model:
            _sub(root, "model", self.model)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> CPUConfig:
        model = element.find("model")
        return cls(
            mode=element.get("mode"),
            model=model.text if model is not None else None,
            check=element.get("check"),
        )


# --- <cputune> -----------------------------------------------------------------------------


@dataclass
class CPUTuneConfig(ConfigObject):
    """CFS bandwidth per vcpu: each vcpu may run ``quota_us`` every ``period_us``."""

    root_name: ClassVar[str] = "cputune"
    period_us: int | None = None
    quota_us: int | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("cputune")
        if self.period_us is not None:
            _sub(root, "period", str(self.period_us))
        if self.quota_us is not None:
            _sub(root, "quota", str(self.quota_us))
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> CPUTuneConfig:
        period = element.find("period")
        quota = element.find("quota")
        return cls(
            period_us=int(period.text) if period is not None and period.text else None,
            quota_us=int(quota.text) if quota is not None and quota.text else None,
        )


# --- <metadata><hvm:instance> --------------------------------------------------------------


@dataclass
class InstanceMetadataConfig(ConfigObject):
    """Our metadata: ``<hvm:hypervm><hvm:tenant>t</hvm:tenant>...</hvm:hypervm>``.

    One child per key, in key order, so a domain's metadata reads like a record and renders
    identically every time. Keys are checked by ``DomainSpec`` (XML-name safe).
    """

    root_name: ClassVar[str] = "hypervm"
    values: dict[str, str] = field(default_factory=dict)

    def format_dom(self) -> ET.Element:
        root = ET.Element(_qname(HYPERVM_NAMESPACE, "hypervm"))
        for key in sorted(self.values):
            _sub(root, _qname(HYPERVM_NAMESPACE, key), self.values[key])
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> InstanceMetadataConfig:
        # virDomainGetMetadata hands the element back without its namespace; the domain XML
        # carries it. Both read the same.
        values = {}
        for child in element:
            if child.tag.startswith(f"{{{HYPERVM_NAMESPACE}}}") or not child.tag.startswith("{"):
                values[child.tag.rpartition("}")[2]] = child.text or ""
        return cls(values=values)

    @classmethod
    def parse_str(cls, xml: str) -> InstanceMetadataConfig:
        return cls.parse_dom(ET.fromstring(xml))


# --- devices -------------------------------------------------------------------------------


@dataclass
class DiskConfig(ConfigObject):
    root_name: ClassVar[str] = "disk"
    source_path: str = ""
    target_dev: str = "vda"
    target_bus: str = "virtio"
    driver_format: str = "raw"
    driver_cache: str | None = None
    readonly: bool = False
    serial: str | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("disk", {"type": "file", "device": "disk"})
        driver_attrs = {"name": "qemu", "type": self.driver_format}
        if self.driver_cache:
            driver_attrs["cache"] = self.driver_cache
        _sub(root, "driver", **driver_attrs)
        _sub(root, "source", file=self.source_path)
        _sub(root, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            _sub(root, "readonly")
        if self.serial is not None:
            _sub(root, "serial", self.serial)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> DiskConfig:
        config = cls()
        driver = element.find("driver")
        if driver is not None:
            config.driver_format = driver.get("type", "raw")
            config.driver_cache = driver.get("cache")
        source = element.find("source")
        if source is not None:
            config.source_path = source.get("file", "")
        target = element.find("target")
        if target is not None:
            config.target_dev = target.get("dev", "")
            config.target_bus = target.get("bus", "")
        config.readonly = element.find("readonly") is not None
        serial = element.find("serial")
        config.serial = serial.text if serial is not None else None
        return config


@dataclass
class CharSourceConfig:
    """The host side of a character device: a file, a pty or a unix socket."""

    kind: str = "file"  # "file" | "pty" | "unix"
    path: str | None = None
    append: bool = False  # file: keep what earlier boots wrote
    mode: str | None = None  # unix: "bind" (libvirt/QEMU listens) | "connect"

    def format_into(self, parent: ET.Element) -> None:
        if self.kind == "pty" or self.path is None:
            return
        attrs = {"path": self.path}
        if self.kind == "file" and self.append:
            attrs["append"] = "on"
        if self.kind == "unix" and self.mode:
            attrs["mode"] = self.mode
        _sub(parent, "source", **attrs)

    @classmethod
    def parse_from(cls, element: ET.Element) -> CharSourceConfig:
        source = element.find("source")
        config = cls(kind=element.get("type", "pty"))
        if source is not None:
            config.path = source.get("path")
            config.append = source.get("append") == "on"
            config.mode = source.get("mode")
        return config


@dataclass
class LogConfig:
    """``<log file=... append='on'/>``: virtlogd copies a pty/unix chardev's output to a file."""

    file: str
    append: bool = True

    def format_into(self, parent: ET.Element) -> None:
        _sub(parent, "log", file=self.file, append=_on_off(self.append))

    @classmethod
    def parse_from(cls, element: ET.Element) -> LogConfig | None:
        log = element.find("log")
        if log is None:
            return None
        return cls(file=log.get("file", ""), append=log.get("append") == "on")


@dataclass
class SerialConfig(ConfigObject):
    root_name: ClassVar[str] = "serial"
    source: CharSourceConfig = field(default_factory=CharSourceConfig)
    target_port: int = 0
    log: LogConfig | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element(self.root_name, {"type": self.source.kind})
        self.source.format_into(root)
        _sub(root, "target", port=str(self.target_port))
        if self.log is not None:
            self.log.format_into(root)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> SerialConfig:
        target = element.find("target")
        return cls(
            source=CharSourceConfig.parse_from(element),
            target_port=int(target.get("port", "0")) if target is not None else 0,
            log=LogConfig.parse_from(element),
        )


@dataclass
class ChannelConfig(ConfigObject):
    """A virtio-serial port the guest sees as ``/dev/virtio-ports/<target_name>``."""

    root_name: ClassVar[str] = "channel"
    source: CharSourceConfig = field(default_factory=CharSourceConfig)
    target_name: str = ""

    def format_dom(self) -> ET.Element:
        root = ET.Element("channel", {"type": self.source.kind})
        self.source.format_into(root)
        _sub(root, "target", type="virtio", name=self.target_name)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> ChannelConfig:
        target = element.find("target")
        return cls(
            source=CharSourceConfig.parse_from(element),
            target_name=target.get("name", "") if target is not None else "",
        )


@dataclass
class ControllerConfig(ConfigObject):
    root_name: ClassVar[str] = "controller"
    controller_type: str = "usb"
    index: int = 0
    model: str | None = None

    def format_dom(self) -> ET.Element:
        attrs = {"type": self.controller_type, "index": str(self.index)}
        if self.model:
            attrs["model"] = self.model
        return ET.Element("controller", attrs)

    @classmethod
    def parse_dom(cls, element: ET.Element) -> ControllerConfig:
        return cls(
            controller_type=element.get("type", ""),
            index=int(element.get("index", "0")),
            model=element.get("model"),
        )


@dataclass
class MemBalloonConfig(ConfigObject):
    root_name: ClassVar[str] = "memballoon"
    model: str = "none"

    def format_dom(self) -> ET.Element:
        return ET.Element("memballoon", {"model": self.model})

    @classmethod
    def parse_dom(cls, element: ET.Element) -> MemBalloonConfig:
        return cls(model=element.get("model", "none"))


@dataclass
class RngConfig(ConfigObject):
    root_name: ClassVar[str] = "rng"
    backend_path: str = "/dev/urandom"

    def format_dom(self) -> ET.Element:
        root = ET.Element("rng", {"model": "virtio"})
        _sub(root, "backend", self.backend_path, model="random")
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> RngConfig:
        backend = element.find("backend")
        return cls(backend_path=(backend.text or "") if backend is not None else "")


@dataclass
class VideoConfig(ConfigObject):
    root_name: ClassVar[str] = "video"
    model: str = "none"

    def format_dom(self) -> ET.Element:
        root = ET.Element("video")
        _sub(root, "model", type=self.model)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> VideoConfig:
        model = element.find("model")
        return cls(model=model.get("type", "") if model is not None else "")


@dataclass
class InterfaceConfig(ConfigObject):
    """``<interface type='network'>``: a NIC on a libvirt network (the tenant networks)."""

    root_name: ClassVar[str] = "interface"
    network: str = ""
    mac: str | None = None
    model: str = "virtio"
    driver: str | None = None
    rom_enabled: bool | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("interface", {"type": "network"})
        if self.mac is not None:
            _sub(root, "mac", address=self.mac)
        _sub(root, "source", network=self.network)
        _sub(root, "model", type=self.model)
        if self.driver is not None:
            _sub(root, "driver", name=self.driver)
        if self.rom_enabled is not None:
            _sub(root, "rom", enabled="yes" if self.rom_enabled else "no")
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> InterfaceConfig:
        config = cls()
        mac = element.find("mac")
        config.mac = mac.get("address") if mac is not None else None
        source = element.find("source")
        config.network = source.get("network", "") if source is not None else ""
        model = element.find("model")
        config.model = model.get("type", "") if model is not None else ""
        driver = element.find("driver")
        config.driver = driver.get("name") if driver is not None else None
        rom = element.find("rom")
        config.rom_enabled = rom.get("enabled") == "yes" if rom is not None and rom.get("enabled") else None
        return config


DeviceConfig = (
    DiskConfig
    | SerialConfig
    | ChannelConfig
    | ControllerConfig
    | MemBalloonConfig
    | RngConfig
    | VideoConfig
    | InterfaceConfig
)

_DEVICE_PARSERS: dict[str, type] = {
    "disk": DiskConfig,
    "serial": SerialConfig,
    "channel": ChannelConfig,
    "controller": ControllerConfig,
    "memballoon": MemBalloonConfig,
    "rng": RngConfig,
    "video": VideoConfig,
    "interface": InterfaceConfig,
}


# --- <qemu:commandline> --------------------------------------------------------------------


@dataclass
class QemuCommandlineConfig(ConfigObject):
    """Raw QEMU arguments; used only for what libvirt 9.0 cannot express (user-net forwards)."""

    root_name: ClassVar[str] = "commandline"
    args: tuple[str, ...] = ()

    def format_dom(self) -> ET.Element:
        root = ET.Element(_qname(QEMU_NAMESPACE, "commandline"))
        for arg in self.args:
            _sub(root, _qname(QEMU_NAMESPACE, "arg"), value=arg)
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> QemuCommandlineConfig:
        return cls(args=tuple(arg.get("value", "") for arg in element.findall(_qname(QEMU_NAMESPACE, "arg"))))


# --- <domain> ------------------------------------------------------------------------------


@dataclass
class DomainConfig(ConfigObject):
    root_name: ClassVar[str] = "domain"
    virt_type: str = "qemu"
    name: str = ""
    uuid: str = ""
    memory_mib: int = 0
    vcpus: int = 1
    os: OSConfig = field(default_factory=OSConfig)
    features: FeaturesConfig | None = None
    cpu: CPUConfig | None = None
    cputune: CPUTuneConfig | None = None
    metadata: InstanceMetadataConfig | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "destroy"
    on_crash: str = "destroy"
    devices: list[DeviceConfig] = field(default_factory=list)
    qemu_commandline: QemuCommandlineConfig | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("domain", {"type": self.virt_type})
        _sub(root, "name", self.name)
        _sub(root, "uuid", self.uuid)
        if self.metadata is not None:
            _sub(root, "metadata").append(self.metadata.format_dom())
        _sub(root, "memory", str(self.memory_mib), unit="MiB")
        _sub(root, "vcpu", str(self.vcpus))
        if self.cputune is not None:
            root.append(self.cputune.format_dom())
        root.append(self.os.format_dom())
        if self.features is not None:
            root.append(self.features.format_dom())
        if self.cpu is not None:
            root.append(self.cpu.format_dom())
        _sub(root, "on_poweroff", self.on_poweroff)
        _sub(root, "on_reboot", self.on_reboot)
        _sub(root, "on_crash", self.on_crash)
        devices = _sub(root, "devices")
        for device in self.devices:
            devices.append(device.format_dom())
        if self.qemu_commandline is not None:
            root.append(self.qemu_commandline.format_dom())
        return root

    @classmethod
    def parse_dom(cls, element: ET.Element) -> DomainConfig:
        if element.tag != "domain":
            raise ValueError(f"expected <domain>, got <{element.tag}>")
        config = cls(virt_type=element.get("type", ""))
        config.name = element.findtext("name", "")
        config.uuid = element.findtext("uuid", "")
        memory = element.find("memory")
        if memory is not None:
            config.memory_mib = memory_mib_from_element(memory)
        config.vcpus = int(element.findtext("vcpu", "1"))
        os_element = element.find("os")
        if os_element is not None:
            config.os = OSConfig.parse_dom(os_element)
        simple = {
            "features": FeaturesConfig,
            "cpu": CPUConfig,
            "cputune": CPUTuneConfig,
        }
        for tag, parser in simple.items():
            found = element.find(tag)
            if found is not None:
                setattr(config, tag, parser.parse_dom(found))
        ours = element.find(f"metadata/{_qname(HYPERVM_NAMESPACE, 'hypervm')}")
        if ours is not None:
            config.metadata = InstanceMetadataConfig.parse_dom(ours)
        for tag in ("on_poweroff", "on_reboot", "on_crash"):
            setattr(config, tag, element.findtext(tag, "destroy"))
        devices = element.find("devices")
        for child in devices if devices is not None else ():
            parser = _DEVICE_PARSERS.get(child.tag)
            if parser is not None:
                config.devices.append(parser.parse_dom(child))
        commandline = element.find(_qname(QEMU_NAMESPACE, "commandline"))
        if commandline is not None:
            config.qemu_commandline = QemuCommandlineConfig.parse_dom(commandline)
        return config

    @classmethod
    def parse_str(cls, xml: str) -> DomainConfig:
        return cls.parse_dom(ET.fromstring(xml))

    def devices_of(self, kind: type) -> list:
        return [device for device in self.devices if isinstance(device, kind)]


def canonical_xml(xml: str) -> str:
    """C14N 2.0 with insignificant whitespace dropped: equal for semantically equal renders."""
    return ET.canonicalize(xml, strip_text=True)
