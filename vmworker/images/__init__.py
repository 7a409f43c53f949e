"""Images: pull an OCI image with skopeo, unpack it with umoci, and cache one read-only
filesystem image per manifest digest (see store.py for the contract)."""

from vmworker.images.credentials import RegistryCredentials
from vmworker.images.errors import (
    ImageError,
    ImageInvalid,
    ImageNotFound,
    ImageTooLarge,
    ImageUnpacksTooLarge,
    InvalidReference,
    RegistryUnauthorized,
)
from vmworker.images.manifest import ImageConfig
from vmworker.images.store import ImageStore, PreparedImage

__all__ = [
    "ImageConfig",
    "ImageError",
    "ImageInvalid",
    "ImageNotFound",
    "ImageStore",
    "ImageTooLarge",
    "ImageUnpacksTooLarge",
    "InvalidReference",
    "PreparedImage",
    "RegistryCredentials",
    "RegistryUnauthorized",
]
