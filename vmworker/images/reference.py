"""Parsing docker/OCI image references the way the docker transport normalises them.

``busybox`` -> docker.io/library/busybox:latest; ``127.0.0.1:5000/app:v1`` keeps its registry;
``repo@sha256:...`` is pinned by digest. Strict patterns also keep anything odd off skopeo's argv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmworker.images.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_REFERENCE_LENGTH = 512


@dataclass(frozen=True)
class ImageReference:
    domain: str  # "docker.io", "127.0.0.1:5000"
    repository: str  # "library/busybox"
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = f"{self.domain}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def docker_transport(self) -> str:
        return f"docker://{self}"

    def pinned(self, digest: str) -> ImageReference:
        """The same repository pinned to one manifest digest (what is actually copied)."""
        return ImageReference(self.domain, self.repository, None, digest)


def parse_reference(text: str) -> ImageReference:
    raw = text.strip()
    if raw.startswith("docker://"):
        raw = raw[len("docker://") :]
    if not raw or len(raw) > MAX_REFERENCE_LENGTH:
        raise InvalidReference(f"invalid image reference {text!r}")
    name, _, digest = raw.partition("@")
    if digest and not DIGEST_PATTERN.match(digest):
        raise InvalidReference(f"invalid image reference {text!r}: bad digest")
    tag = None
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name, tag = name.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid image reference {text!r}: bad tag")
    first, _, rest = name.partition("/")
    looks_like_domain = "." in first or ":" in first or first == "localhost"
    if rest and looks_like_domain:
        if not _DOMAIN.match(first):
            raise InvalidReference(f"invalid image reference {text!r}: bad registry name")
        domain, repository = first, rest
    else:
        domain, repository = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.match(repository):
        raise InvalidReference(f"invalid image reference {text!r}: bad repository name")
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(domain=domain, repository=repository, tag=tag, digest=digest or None)
