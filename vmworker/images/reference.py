"""Image references for the host worker: the platform's one parser (vmworker.image_reference),
its refusals raised as this package's InvalidReference (a permanent image failure)."""

from __future__ import annotations

from vmworker.image_reference import ImageReference, InvalidImageReference, parse_image_reference
from vmworker.images.errors import InvalidReference

__all__ = ["ImageReference", "parse_reference"]


def parse_reference(text: str) -> ImageReference:
    try:
        return parse_image_reference(text)
    except InvalidImageReference as error:
        raise InvalidReference(str(error)) from None
