"""OCI/Docker image references: validation and splitting, as Docker normalises them. The one
parser of the platform: the portal's Marathon parser (portal.marathon, at admission) and the host
worker (vmworker.images, before a pull) both use it, so a reference the portal stored is one the
host accepts. Standard library only (portal.marathon's purity test holds it to that).

Contract: ``parse_image_reference("nginx")`` returns
``ImageReference(registry_host="docker.io", repository="library/nginx", tag="latest", digest=None)``;
an invalid reference raises ``InvalidImageReference`` with a message fit for a 422. The grammar is
distribution/reference's: ``[host[:port]/]path[:tag][@algorithm:hex]``. The first component is a
registry host only if it contains ``.`` or ``:`` or is ``localhost``; otherwise the registry is
``docker.io``, and a one-component Docker Hub path gets ``library/``. Without tag or digest the tag
is ``latest``; with only a digest there is no tag. ``index.docker.io`` is spelled ``docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB_REGISTRY_HOST = "docker.io"
DOCKER_HUB_LEGACY_HOSTS = frozenset({"index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAXIMUM_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY_HOST = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_DIGEST_HEX_LENGTH_BY_ALGORITHM = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidImageReference(ValueError):
    pass


@dataclass(frozen=True)
class ImageReference:
    registry_host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def canonical(self) -> str:
        """Fully qualified form, e.g. ``docker.io/library/nginx:latest`` or ``host:5000/a/b@sha256:...``."""
        reference = f"{self.registry_host}/{self.repository}"
        if self.tag is not None:
            reference += f":{self.tag}"
        if self.digest is not None:
            reference += f"@{self.digest}"
        return reference

    @property
    def is_pinned(self) -> bool:
        return self.digest is not None

    def __str__(self) -> str:
        return self.canonical

    def docker_transport(self) -> str:
        """skopeo's argument; the strict grammar keeps anything option-like off its argv."""
        return f"docker://{self.canonical}"

    def pinned(self, digest: str) -> ImageReference:
        """The same repository pinned to one manifest digest (what is actually copied)."""
        return ImageReference(self.registry_host, self.repository, None, digest)


def parse_image_reference(raw_reference: str) -> ImageReference:
    if not raw_reference:
        raise InvalidImageReference("image reference must not be empty")
    if raw_reference != raw_reference.strip() or any(c.isspace() for c in raw_reference):
        raise InvalidImageReference(f"image reference '{raw_reference}' must not contain whitespace")

    name_and_tag, _, digest = raw_reference.partition("@")
    if "@" in digest:
        raise InvalidImageReference(f"image reference '{raw_reference}' has more than one '@'")
    if digest or raw_reference.endswith("@"):
        _check_digest(raw_reference, digest)

    name, tag = _split_tag(name_and_tag)
    if tag is not None and not _TAG.match(tag):
        raise InvalidImageReference(
            f"tag '{tag}' in image reference '{raw_reference}' is invalid: up to 128 of letters, digits, "
            "'_', '.', '-', not starting with '.' or '-'"
        )

    registry_host, repository = _split_registry_host(name)
    if not _REGISTRY_HOST.match(registry_host):
        raise InvalidImageReference(f"registry host '{registry_host}' in image reference '{raw_reference}' is invalid")
    if registry_host in DOCKER_HUB_LEGACY_HOSTS:
        registry_host = DOCKER_HUB_REGISTRY_HOST
    if not repository:
        raise InvalidImageReference(f"image reference '{raw_reference}' has no repository")
    for component in repository.split("/"):
        if component != component.lower() and _PATH_COMPONENT.match(component.lower()):
            raise InvalidImageReference(f"repository name in image reference '{raw_reference}' must be lowercase")
        if not _PATH_COMPONENT.match(component):
            raise InvalidImageReference(
                f"repository path component '{component}' in image reference '{raw_reference}' is invalid: "
                "use lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )
    if len(f"{registry_host}/{repository}") > MAXIMUM_NAME_LENGTH:
        raise InvalidImageReference(f"image name in '{raw_reference}' is longer than {MAXIMUM_NAME_LENGTH} characters")
    if registry_host == DOCKER_HUB_REGISTRY_HOST and "/" not in repository:
        repository = f"{DOCKER_HUB_OFFICIAL_NAMESPACE}/{repository}"
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return ImageReference(registry_host=registry_host, repository=repository, tag=tag, digest=digest or None)


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    last_slash = name_and_tag.rfind("/")
    last_colon = name_and_tag.rfind(":")
    if last_colon > last_slash:
        return name_and_tag[:last_colon], name_and_tag[last_colon + 1 :]
    return name_and_tag, None


def _split_registry_host(name: str) -> tuple[str, str]:
    first_component, slash, remainder = name.partition("/")
    looks_like_host = "." in first_component or ":" in first_component or first_component == "localhost"
    if not slash or not looks_like_host:
        return DOCKER_HUB_REGISTRY_HOST, name
    return first_component, remainder


def _check_digest(raw_reference: str, digest: str) -> None:
    if not _DIGEST.match(digest):
        raise InvalidImageReference(
            f"digest '{digest}' in image reference '{raw_reference}' is invalid: expected 'sha256:<64 hex digits>'"
        )
    algorithm, _, hex_digits = digest.partition(":")
    expected_length = _DIGEST_HEX_LENGTH_BY_ALGORITHM.get(algorithm)
    if expected_length is None:
        raise InvalidImageReference(
            f"digest algorithm '{algorithm}' in image reference '{raw_reference}' is not supported "
            f"(supported: {', '.join(sorted(_DIGEST_HEX_LENGTH_BY_ALGORITHM))})"
        )
    if len(hex_digits) != expected_length or hex_digits != hex_digits.lower():
        raise InvalidImageReference(
            f"digest '{digest}' in image reference '{raw_reference}' must have {expected_length} lowercase hex digits"
        )
