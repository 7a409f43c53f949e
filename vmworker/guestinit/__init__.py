"""HyperVM guest init: the initramfs builder, the config disk and the guest protocol.

The init itself is ``init/hvinit.c`` (C, static, PID 1); the contracts it keeps
are documented in ``config.py`` (config disk) and ``protocol.py`` (channels).
"""

from vmworker.guestinit.config import (
    CONFIG_DISK_SERIAL,
    ConfigDiskError,
    GuestConfig,
    GuestNetwork,
    GuestTenantInterface,
    write_config_disk,
)
from vmworker.guestinit.initramfs import InitramfsError, build_initramfs
from vmworker.guestinit.protocol import (
    CONTROL_PORT_NAME,
    KERNEL_CMDLINE,
    LOG_PORT_NAME,
    STOP_COMMAND,
    GuestLogParser,
    parse_guest_log,
)

__all__ = [
    "CONFIG_DISK_SERIAL",
    "CONTROL_PORT_NAME",
    "KERNEL_CMDLINE",
    "LOG_PORT_NAME",
    "STOP_COMMAND",
    "ConfigDiskError",
    "GuestConfig",
    "GuestLogParser",
    "GuestNetwork",
    "GuestTenantInterface",
    "InitramfsError",
    "build_initramfs",
    "parse_guest_log",
    "write_config_disk",
]
