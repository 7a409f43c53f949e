"""ImageStore: an image reference in, one cached read-only filesystem image out.

Contract of ``prepare``:
- The reference is always resolved against the registry with the caller's credentials, even on
  a cache hit: a tag may have moved, and a cached image must not be handed to a caller whose
  credentials the registry would refuse.
- The manifest is inspected first; an image whose layers (+ config) add up to more than
  ``max_image_bytes`` is refused with ImageTooLarge before any blob is downloaded.
- What is copied is the digest that was inspected (``repo@sha256:...``), so the recorded
  ``manifest_digest`` is sha256 of the manifest bytes the registry served, skopeo verifies every
  blob against it, and the pulled layout is checked against it once more.
- What an image unpacks to is bounded by the smaller of ``max_unpacked_bytes`` (the platform's
  per-image limit) and the caller's ``quota_limit_bytes`` (what is left of the tenant's disk
  quota; not applied to ``quota_exempt_digests``, the images the tenant holds already), enforced
  while unpacking (unpack.py) and on a cache hit alike: ImageUnpacksTooLarge names the limit.
  On that abort the child is killed, the work dir removed and the cache left as it was.
- One filesystem image per manifest digest, shared by all references to it; LRU-evicted beyond
  ``max_cache_bytes`` (never the one being returned).
- Every temporary file lives in one per-call work dir under the store root, removed on success,
  error and interrupt alike. Credentials exist only in a 0600 authfile in that dir.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vmworker.images.cache import ImageCache
from vmworker.images.credentials import RegistryCredentials
from vmworker.images.errors import ImageInvalid, ImageTooLarge, ImageUnpacksTooLarge
from vmworker.images.fsimage import FS_TYPES, make_filesystem_image
from vmworker.images.manifest import (
    INDEX_TYPES,
    ImageConfig,
    ImageManifest,
    media_type_of,
    parse_image_manifest,
    read_layout_image,
    select_platform_manifest,
    sha256_digest,
)
from vmworker.images.reference import ImageReference, parse_reference
from vmworker.images.skopeo import SkopeoSession
from vmworker.images.unpack import (
    LIMIT_PLATFORM,
    LIMIT_TENANT_QUOTA,
    OverLimit,
    UnpackLimit,
    count_layers,
    unpack_rootfs,
)

logger = logging.getLogger("vmworker.images")

LAYOUT_TAG = "image"
WORK_DIR_PATTERN = re.compile(r"^prepare-(\d+)-")
_CREATED_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})")


@dataclass(frozen=True)
class PreparedImage:
    reference: str
    manifest_digest: str  # "sha256:..."
    fs_path: Path  # read-only filesystem image (erofs preferred, else ext4)
    fs_type: str  # "erofs" | "ext4"
    config: ImageConfig
    size_bytes: int
    timings_s: dict[str, float]  # {"pull", "count", "unpack", "fs_image"}; a cache hit -> {"cache"}
    unpacked_bytes: int = 0  # the unpacked tree (unpack.tree_bytes): what the tenant's disk quota is charged


def _format_mib(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def _source_date_epoch(created: str) -> int:
    match = _CREATED_PREFIX.match(created)
    if not match:
        return 0
    moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return max(int(moment.timestamp()), 0)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ImageStore:
    def __init__(
        self,
        root: Path,
        *,
        max_cache_bytes: int,
        max_image_bytes: int,
        max_unpacked_bytes: int = 4 * 1024 * 1024 * 1024,
        fs_type: str = "erofs",
        command_timeout_s: float = 600.0,
        os_name: str = "linux",
        architecture: str = "amd64",
        qemu_group_id: int | None = None,
    ) -> None:
        if fs_type not in FS_TYPES:
            raise ValueError(f"fs_type must be one of {FS_TYPES}")
        self.cache = ImageCache(Path(root), qemu_group_id=qemu_group_id)
        self.max_cache_bytes = max_cache_bytes
        self.max_image_bytes = max_image_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self.fs_type = fs_type
        self.command_timeout_s = command_timeout_s
        self.os_name = os_name
        self.architecture = architecture
        self._remove_stale_work_dirs()

    def _remove_stale_work_dirs(self) -> None:
        """Work dirs of processes that died mid-prepare (a live pid's dir is left alone)."""
        for path in self.cache.work_dir.iterdir():
            match = WORK_DIR_PATTERN.match(path.name)
            if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)

    def prepare(
        self,
        reference: str,
        *,
        credentials: RegistryCredentials | None = None,
        tls_verify: bool = True,
        quota_limit_bytes: int | None = None,
        quota_exempt_digests: frozenset[str] = frozenset(),
    ) -> PreparedImage:
        started = time.monotonic()
        image_reference = parse_reference(reference)
        work_dir = Path(tempfile.mkdtemp(prefix=f"prepare-{os.getpid()}-", dir=self.cache.work_dir))
        try:
            session = SkopeoSession(
                work_dir / "skopeo",
                image_reference,
                credentials,
                tls_verify=tls_verify,
                command_timeout_s=self.command_timeout_s,
            )
            manifest = self._resolve(session, image_reference)
            limit = self._unpack_limit(manifest.digest, quota_limit_bytes, quota_exempt_digests)
            with self.cache.build_lock(manifest.digest):
                cached = self.cache.lookup(manifest.digest, str(image_reference))
                if cached is not None and cached.unpacked_bytes > limit.max_bytes:
                    raise ImageUnpacksTooLarge(
                        str(image_reference), limit_bytes=limit.max_bytes, limit_source=limit.source
                    )
                if cached is not None:
                    timings = {"cache": time.monotonic() - started}
                    logger.info(
                        "image.prepare.cache_hit",
                        extra={
                            "reference": str(image_reference),
                            "digest": manifest.digest,
                            "duration_s": timings["cache"],
                        },
                    )
                    return PreparedImage(
                        reference=str(image_reference),
                        manifest_digest=manifest.digest,
                        fs_path=self.cache.image_path(cached),
                        fs_type=cached.fs_type,
                        config=ImageConfig.from_json(cached.config),
                        size_bytes=cached.size_bytes,
                        timings_s=timings,
                        unpacked_bytes=cached.unpacked_bytes,
                    )
                try:
                    return self._build(session, image_reference, manifest, work_dir, started, limit)
                except OverLimit:
                    logger.warning(
                        "image.prepare.over_limit",
                        extra={"reference": str(image_reference), "digest": manifest.digest, "limit": limit.source},
                    )
                    raise ImageUnpacksTooLarge(
                        str(image_reference), limit_bytes=limit.max_bytes, limit_source=limit.source
                    ) from None
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _unpack_limit(self, digest: str, quota_limit_bytes: int | None, exempt: frozenset[str]) -> UnpackLimit:
        """The smaller limit wins; an image the tenant holds already is not charged again."""
        if quota_limit_bytes is not None and digest not in exempt and quota_limit_bytes < self.max_unpacked_bytes:
            return UnpackLimit(max(0, quota_limit_bytes), LIMIT_TENANT_QUOTA)
        return UnpackLimit(self.max_unpacked_bytes, LIMIT_PLATFORM)

    def _resolve(self, session: SkopeoSession, reference: ImageReference) -> ImageManifest:
        raw = session.inspect_raw(reference)
        if reference.digest and sha256_digest(raw) != reference.digest:
            # skopeo checks this too; the digest we record must never rest on trust alone.
            raise ImageInvalid(f"registry served a manifest that does not match {reference}")
        if media_type_of(raw) in INDEX_TYPES:
            digest = select_platform_manifest(raw, os_name=self.os_name, architecture=self.architecture)
            raw = session.inspect_raw(reference.pinned(digest))
            if sha256_digest(raw) != digest:
                raise ImageInvalid(f"registry served a manifest that does not match {reference}")
        manifest = parse_image_manifest(raw)
        total_bytes = manifest.layer_bytes + manifest.config_bytes
        if total_bytes > self.max_image_bytes:
            raise ImageTooLarge(
                f"image {reference} is {_format_mib(total_bytes)} compressed, over the "
                f"{_format_mib(self.max_image_bytes)} limit"
            )
        return manifest

    def _build(
        self,
        session: SkopeoSession,
        reference: ImageReference,
        manifest: ImageManifest,
        work_dir: Path,
        started: float,
        limit: UnpackLimit,
    ) -> PreparedImage:
        layout = work_dir / "layout"
        session.copy_to_oci_layout(reference.pinned(manifest.digest), layout, LAYOUT_TAG)
        platform_image = read_layout_image(layout, LAYOUT_TAG, manifest)
        self._check_platform(reference, platform_image.os, platform_image.architecture)
        pulled = time.monotonic()
        # A gzip bomb stops here, before umoci writes a byte.
        count_layers(layout, manifest.layer_digests, max_bytes=limit.max_bytes, timeout_s=self.command_timeout_s)
        counted = time.monotonic()

        rootfs = work_dir / "rootfs"
        unpacked_bytes = unpack_rootfs(
            layout,
            LAYOUT_TAG,
            rootfs,
            image=str(reference),
            timeout_s=self.command_timeout_s,
            max_bytes=limit.max_bytes,
        )
        shutil.rmtree(layout)  # blobs are no longer needed; halves peak disk use
        unpacked = time.monotonic()

        fs_output = work_dir / f"rootfs.{self.fs_type}"
        make_filesystem_image(
            rootfs,
            fs_output,
            fs_type=self.fs_type,
            manifest_digest=manifest.digest,
            source_date_epoch=_source_date_epoch(platform_image.created),
            timeout_s=self.command_timeout_s,
            max_tree_bytes=limit.max_bytes,
        )
        entry, evicted = self.cache.insert(
            digest=manifest.digest,
            reference=str(reference),
            built_file=fs_output,
            fs_type=self.fs_type,
            config=platform_image.config.to_json(),
            max_cache_bytes=self.max_cache_bytes,
            unpacked_bytes=unpacked_bytes,
        )
        finished = time.monotonic()
        timings = {
            "pull": pulled - started,
            "count": counted - pulled,
            "unpack": unpacked - counted,
            "fs_image": finished - unpacked,
        }
        logger.info(
            "image.prepare.built",
            extra={
                "reference": str(reference),
                "digest": manifest.digest,
                "size_bytes": entry.size_bytes,
                "unpacked_bytes": unpacked_bytes,
                "timings_s": timings,
                "evicted": evicted,
            },
        )
        return PreparedImage(
            reference=str(reference),
            manifest_digest=manifest.digest,
            fs_path=self.cache.image_path(entry),
            fs_type=entry.fs_type,
            config=platform_image.config,
            size_bytes=entry.size_bytes,
            timings_s=timings,
            unpacked_bytes=unpacked_bytes,
        )

    def _check_platform(self, reference: ImageReference, os_name: str, architecture: str) -> None:
        if (os_name and os_name != self.os_name) or (architecture and architecture != self.architecture):
            raise ImageInvalid(
                f"image {reference} is for {os_name or '?'}/{architecture or '?'}, "
                f"this host runs {self.os_name}/{self.architecture}"
            )
