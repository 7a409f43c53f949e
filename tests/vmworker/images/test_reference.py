from __future__ import annotations

import pytest

from vmworker.images import InvalidReference
from vmworker.images.reference import ImageReference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text,expected",
    [
        ("busybox", ImageReference("docker.io", "library/busybox", "latest", None)),
        ("docker.io/busybox:1.36", ImageReference("docker.io", "library/busybox", "1.36", None)),
        ("team/app", ImageReference("docker.io", "team/app", "latest", None)),
        (
            "127.0.0.1:5000/hypervm-test/printer:latest",
            ImageReference("127.0.0.1:5000", "hypervm-test/printer", "latest", None),
        ),
        ("localhost/app:v1", ImageReference("localhost", "app", "v1", None)),
        (
            f"registry.example.com/app@{DIGEST}",
            ImageReference("registry.example.com", "app", None, DIGEST),
        ),
        (
            f"quay.io/org/app:v2@{DIGEST}",
            ImageReference("quay.io", "org/app", "v2", DIGEST),
        ),
    ],
)
def test_references_normalise_like_the_docker_transport(text: str, expected: ImageReference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER/case",
        "app:bad tag",
        "app@sha256:short",
        "-flag-looking",
        "reg.example.com/app:-x",
        "a" * 600,
        "evil.example.com:99x/app",
    ],
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_pinned_reference_drops_the_tag() -> None:
    pinned = parse_reference("127.0.0.1:5000/app:v1").pinned(DIGEST)

    assert pinned.docker_transport() == f"docker://127.0.0.1:5000/app@{DIGEST}"
