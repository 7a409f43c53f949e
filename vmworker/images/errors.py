"""Errors of image preparation.

Every message is one line a user can act on and never contains credentials. ``detail`` keeps
the (redacted, truncated) tool output for logs and operators.
"""

from __future__ import annotations


class ImageError(Exception):
    """Preparing the image failed (registry unreachable, tool failure, ...)."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(" ".join(message.split()))
        self.detail = detail


class InvalidReference(ImageError):
    """The image reference is not a valid docker/OCI reference."""


class ImageNotFound(ImageError):
    """The registry has no such repository, tag or digest."""


class RegistryUnauthorized(ImageError):
    """The registry refused the credentials (or asks for some and none were given)."""


class ImageTooLarge(ImageError):
    """The manifest's layers exceed the configured size; refused before any layer download."""


class ImageUnpacksTooLarge(ImageTooLarge):
    """The image unpacks to more than the limit of this pull (the platform's per-image limit or
    what is left of the tenant's disk quota, whichever is smaller); found while unpacking and
    never retried: the same image unpacks to the same size."""

    def __init__(self, image: str, *, limit_bytes: int, limit_source: str) -> None:
        super().__init__(f"image {image} unpacks to more than {limit_bytes // (1024 * 1024)} MiB ({limit_source})")
        self.limit_bytes = limit_bytes
        self.limit_source = limit_source


class ImageInvalid(ImageError):
    """The image is malformed or hostile (bad manifest/config, digest mismatch, unsafe layer)."""


class RegistryUnavailable(ImageError):
    """The registry could not answer now (unreachable, timed out, 5xx, rate-limited): worth a retry."""
