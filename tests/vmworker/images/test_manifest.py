from __future__ import annotations

import json

import pytest

from vmworker.images import ImageConfig, ImageInvalid
from vmworker.images.manifest import (
    OCI_MANIFEST,
    parse_image_config,
    parse_image_manifest,
    select_platform_manifest,
    sha256_digest,
)

LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64
CONFIG = "sha256:" + "c" * 64


def manifest_bytes(**overrides: object) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": CONFIG,
            "size": 100,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": LAYER_A,
                "size": 1000,
            },
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": LAYER_B,
                "size": 2000,
            },
        ],
    }
    document.update(overrides)
    return json.dumps(document).encode()


def test_manifest_sums_layer_sizes_and_digests_the_exact_bytes() -> None:
    raw = manifest_bytes()

    manifest = parse_image_manifest(raw)

    assert manifest.layer_bytes == 3000
    assert manifest.config_bytes == 100
    assert manifest.layer_digests == (LAYER_A, LAYER_B)
    assert manifest.digest == sha256_digest(raw)


@pytest.mark.parametrize(
    "overrides",
    [
        {"schemaVersion": 1},
        {"layers": [{"digest": LAYER_A, "size": -1}]},
        {"layers": [{"digest": "md5:abc", "size": 1}]},
        {"layers": [{"digest": LAYER_A, "size": "big"}]},
        {"config": None},
        {"mediaType": "application/vnd.example.unknown"},
    ],
)
def test_malformed_manifests_are_invalid(overrides: dict) -> None:
    with pytest.raises(ImageInvalid):
        parse_image_manifest(manifest_bytes(**overrides))


def test_platform_selection_picks_linux_amd64() -> None:
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "digest": LAYER_A,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "digest": LAYER_B,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()

    assert select_platform_manifest(index, os_name="linux", architecture="amd64") == LAYER_B
    with pytest.raises(ImageInvalid):
        select_platform_manifest(index, os_name="linux", architecture="s390x")


def test_config_reads_runtime_fields_and_tolerates_nulls() -> None:
    raw = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/app"],
                "Cmd": None,
                "Env": ["A=1"],
                "WorkingDir": "/srv",
                "User": "nobody:nogroup",
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            },
        }
    ).encode()

    image = parse_image_config(raw)

    assert image.config == ImageConfig(
        entrypoint=("/app",),
        cmd=(),
        env=("A=1",),
        working_dir="/srv",
        user="nobody:nogroup",
        exposed_ports=("53/udp", "8080/tcp"),
    )


@pytest.mark.parametrize(
    "runtime",
    [{"Entrypoint": "/bin/sh -c x"}, {"Env": [1, 2]}, {"ExposedPorts": ["80/tcp"]}, {"User": 0}],
)
def test_config_with_wrong_types_is_invalid(runtime: dict) -> None:
    with pytest.raises(ImageInvalid):
        parse_image_config(json.dumps({"config": runtime}).encode())
