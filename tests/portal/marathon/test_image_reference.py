import pytest

from vmworker.image_reference import ImageReference, InvalidImageReference, parse_image_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("raw_reference", "expected"),
    [
        ("nginx", ImageReference("docker.io", "library/nginx", "latest", None)),
        ("nginx:1.25-alpine", ImageReference("docker.io", "library/nginx", "1.25-alpine", None)),
        ("bitnami/redis", ImageReference("docker.io", "bitnami/redis", "latest", None)),
        ("docker.io/nginx", ImageReference("docker.io", "library/nginx", "latest", None)),
        ("index.docker.io/foo/bar:v2", ImageReference("docker.io", "foo/bar", "v2", None)),
        ("localhost/demo", ImageReference("localhost", "demo", "latest", None)),
        ("localhost:5000/demo/http:1.0", ImageReference("localhost:5000", "demo/http", "1.0", None)),
        ("127.0.0.1:5000/demo", ImageReference("127.0.0.1:5000", "demo", "latest", None)),
        ("[::1]:5000/demo", ImageReference("[::1]:5000", "demo", "latest", None)),
        ("ghcr.io/org/team/app@" + DIGEST, ImageReference("ghcr.io", "org/team/app", None, DIGEST)),
        ("quay.io/a/b:t@" + DIGEST, ImageReference("quay.io", "a/b", "t", DIGEST)),
        (
            "my-registry.example.com/a.b/c__d/e-f",
            ImageReference("my-registry.example.com", "a.b/c__d/e-f", "latest", None),
        ),
    ],
)
def test_valid_references_split_like_docker(raw_reference, expected):
    assert parse_image_reference(raw_reference) == expected


@pytest.mark.parametrize(
    ("raw_reference", "message_part"),
    [
        ("", "must not be empty"),
        ("nginx latest", "whitespace"),
        ("Nginx", "must be lowercase"),
        ("nginx:", "tag ''"),
        ("nginx:-x", "tag '-x'"),
        ("nginx:" + "t" * 129, "tag"),
        ("mesosphere:marathon/latest", "registry host 'mesosphere:marathon'"),
        ("-bad.example.com/x", "registry host"),
        ("registry.example.com/", "no repository"),
        ("a//b", "repository path component ''"),
        ("a/-b", "repository path component '-b'"),
        ("nginx@sha256:1234", "digest"),
        ("nginx@md5:" + "ab" * 16, "digest algorithm 'md5'"),
        ("nginx@sha256:" + "AB" * 32, "lowercase hex"),
        ("nginx@" + DIGEST + "@" + DIGEST, "more than one '@'"),
        ("nginx@", "digest"),
        ("r.io/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_references_are_refused_with_a_reason(raw_reference, message_part):
    with pytest.raises(InvalidImageReference, match=None) as refused:
        parse_image_reference(raw_reference)
    assert message_part in str(refused.value)


def test_canonical_form_is_fully_qualified():
    assert parse_image_reference("nginx").canonical == "docker.io/library/nginx:latest"
    assert parse_image_reference("r.io/a@" + DIGEST).canonical == f"r.io/a@{DIGEST}"


def test_only_a_digest_pins_an_image():
    assert parse_image_reference("r.io/a@" + DIGEST).is_pinned
    assert not parse_image_reference("r.io/a:1").is_pinned
