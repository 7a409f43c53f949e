"""libvirt driver for HyperVMs, in Nova's shape.

- ``spec``: what the runtime asks for (DomainSpec and friends), plain values;
- ``config``: one class per domain-XML element, render + parse, no decisions;
- ``designer``: DomainSpec -> config objects, every policy decision;
- ``host`` / ``guest``: the libvirt connection and domains; the only modules that touch libvirt;
- ``fake``: a stateful in-memory Host/Guest for fast tests of callers;
- ``probe`` / ``probe_initramfs``: kvm-or-TCG boot probe; ``kernel``: PVH vmlinux extraction.

Importing this package does not import libvirt; import ``host`` (or ``fake``) for that.
"""

from vmworker.driver.errors import ConnectionFailed, DomainExists, DomainNotFound, DriverError
from vmworker.driver.spec import ChannelSpec, DiskSpec, DomainSpec, PortForward

__all__ = [
    "ChannelSpec",
    "ConnectionFailed",
    "DiskSpec",
    "DomainExists",
    "DomainNotFound",
    "DomainSpec",
    "DriverError",
    "PortForward",
]
