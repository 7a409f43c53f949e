"""Errors the driver raises. Host (and the fake) translate every libvirt failure into these, so
callers never see ``libvirt.libvirtError``."""


class DriverError(Exception):
    """A libvirt operation failed; the message says which and why."""


class DomainNotFound(DriverError):
    pass


class DomainExists(DriverError):
    """The domain name is taken by a domain with a different UUID (not one of our instance's)."""


class ConnectionFailed(DriverError):
    """libvirtd could not be reached (not running, wrong URI, connection dropped for good)."""
