"""Reading OCI/docker manifests, indexes and image configs, trusting nothing unverified.

Registry bytes are parsed only after their digest is known: the manifest digest we record is
sha256 of the exact bytes the registry served, and every blob read back from the local OCI
layout is hashed again before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmworker.images.errors import ImageInvalid

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")  # what this worker verifies and stores

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]  # "K=V"
    working_dir: str
    user: str
    exposed_ports: tuple[str, ...]  # "80/tcp"

    def to_json(self) -> dict[str, Any]:
        return {
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(
            entrypoint=tuple(data["entrypoint"]),
            cmd=tuple(data["cmd"]),
            env=tuple(data["env"]),
            working_dir=data["working_dir"],
            user=data["user"],
            exposed_ports=tuple(data["exposed_ports"]),
        )


@dataclass(frozen=True)
class ImageManifest:
    digest: str
    media_type: str
    config_digest: str
    config_bytes: int
    layer_digests: tuple[str, ...]
    layer_bytes: int  # sum of the (compressed) layer sizes the manifest declares


@dataclass(frozen=True)
class PlatformImage:
    """One image config, with the platform it claims to be for."""

    config: ImageConfig
    os: str
    architecture: str
    created: str


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImageInvalid(f"the image {what} is not valid JSON") from error
    if not isinstance(document, dict):
        raise ImageInvalid(f"the image {what} is not a JSON object")
    return document


def _digest_field(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_PATTERN.match(value):
        raise ImageInvalid(f"the image {what} has an unsupported or malformed digest")
    return value


def _size_field(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ImageInvalid(f"the image {what} has a malformed size")
    return value


def media_type_of(raw: bytes) -> str:
    document = _load_json(raw, "manifest")
    if document.get("schemaVersion") == 1:
        raise ImageInvalid("docker schema 1 manifests are not supported; push the image again")
    media_type = document.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    # mediaType is optional in OCI documents: tell them apart by shape.
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def parse_image_manifest(raw: bytes) -> ImageManifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ImageInvalid("the image manifest is too large")
    media_type = media_type_of(raw)
    if media_type not in IMAGE_MANIFEST_TYPES:
        raise ImageInvalid(f"unsupported manifest type {media_type[:100]}")
    document = _load_json(raw, "manifest")
    config = document.get("config")
    layers = document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ImageInvalid("the image manifest has no config or no layer list")
    layer_digests = []
    layer_bytes = 0
    for layer in layers:
        if not isinstance(layer, dict):
            raise ImageInvalid("the image manifest has a malformed layer")
        layer_digests.append(_digest_field(layer.get("digest"), "layer"))
        layer_bytes += _size_field(layer.get("size"), "layer")
    return ImageManifest(
        digest=sha256_digest(raw),
        media_type=media_type,
        config_digest=_digest_field(config.get("digest"), "config"),
        config_bytes=_size_field(config.get("size"), "config"),
        layer_digests=tuple(layer_digests),
        layer_bytes=layer_bytes,
    )


def select_platform_manifest(raw_index: bytes, *, os_name: str, architecture: str) -> str:
    """Digest of the index entry for os/architecture (what a docker pull would pick)."""
    if len(raw_index) > MAX_MANIFEST_BYTES:
        raise ImageInvalid("the image index is too large")
    document = _load_json(raw_index, "index")
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        raise ImageInvalid("the image index has no manifest list")
    for entry in manifests:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        if platform.get("os") == os_name and platform.get("architecture") == architecture:
            return _digest_field(entry.get("digest"), "index entry")
    raise ImageInvalid(f"the image has no {os_name}/{architecture} variant")


def _string_tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageInvalid(f"the image config field {what} is not a list of strings")
    return tuple(value)


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageInvalid(f"the image config field {what} is not a string")
    return value


def parse_image_config(raw: bytes) -> PlatformImage:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ImageInvalid("the image config is too large")
    document = _load_json(raw, "config")
    runtime = document.get("config") or {}
    if not isinstance(runtime, dict):
        raise ImageInvalid("the image config field config is not an object")
    exposed = runtime.get("ExposedPorts") or {}
    if not isinstance(exposed, dict):
        raise ImageInvalid("the image config field ExposedPorts is not an object")
    config = ImageConfig(
        entrypoint=_string_tuple(runtime.get("Entrypoint"), "Entrypoint"),
        cmd=_string_tuple(runtime.get("Cmd"), "Cmd"),
        env=_string_tuple(runtime.get("Env"), "Env"),
        working_dir=_string(runtime.get("WorkingDir"), "WorkingDir"),
        user=_string(runtime.get("User"), "User"),
        exposed_ports=tuple(sorted(str(port) for port in exposed)),
    )
    return PlatformImage(
        config=config,
        os=_string(document.get("os"), "os"),
        architecture=_string(document.get("architecture"), "architecture"),
        created=_string(document.get("created"), "created"),
    )


def _read_verified_blob(layout: Path, digest: str, max_bytes: int, what: str) -> bytes:
    blob_path = layout / "blobs" / "sha256" / _digest_field(digest, what).split(":", 1)[1]
    try:
        if blob_path.stat().st_size > max_bytes:
            raise ImageInvalid(f"the image {what} is too large")
        data = blob_path.read_bytes()
    except FileNotFoundError as error:
        raise ImageInvalid(f"the image {what} is missing from the pulled layout") from error
    if sha256_digest(data) != digest:
        raise ImageInvalid(f"the image {what} does not match its digest")
    return data


def read_layout_image(layout: Path, tag: str, expected: ImageManifest) -> PlatformImage:
    """The config of `tag` in a layout skopeo just wrote, checked against the manifest we
    size-checked: same config blob, same layers, every byte hashed."""
    index = _load_json((layout / "index.json").read_bytes(), "layout index")
    descriptors = [
        entry
        for entry in index.get("manifests") or []
        if isinstance(entry, dict) and (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag
    ]
    if len(descriptors) != 1:
        raise ImageInvalid("the pulled layout does not hold exactly one image")
    manifest_digest = _digest_field(descriptors[0].get("digest"), "layout manifest")
    manifest = parse_image_manifest(_read_verified_blob(layout, manifest_digest, MAX_MANIFEST_BYTES, "manifest"))
    if (manifest.config_digest, manifest.layer_digests) != (
        expected.config_digest,
        expected.layer_digests,
    ):
        raise ImageInvalid("the pulled image does not match the manifest that was inspected")
    return parse_image_config(_read_verified_blob(layout, manifest.config_digest, MAX_CONFIG_BYTES, "config"))
