"""The host's cache of filesystem images: one file per manifest digest plus a JSON index.

Layout under the store root (all root-owned; the work and lock dirs are 0700; the root and
images/ are 0710 with QEMU's group when one is given, else 0711):
  index.json            {"version": 1, "images": {digest: entry}, "references": {ref: digest}}
  index.lock            flock held for every read-modify-write of index.json (short)
  locks/build-XX.lock   flock held while one digest (bucketed by its first hex byte) is built,
                        so two processes preparing the same image pull it once
  images/<hex>.<fs>     the filesystem images, 0440 with QEMU's group (else 0444)
  work/prepare-<pid>-*  per-call work dirs, removed on every path

index.json is replaced atomically (write, fsync, rename). Eviction is least-recently-used by
`last_used`, runs after each insert while the index lock is held, and never removes the digest
the current call is returning. A file under images/ that the index does not know (left by a
crash) is removed at the same time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("vmworker.images.cache")

INDEX_VERSION = 1
IMAGE_FILE_PATTERN = re.compile(r"^[0-9a-f]{64}\.(erofs|ext4)$")


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    fs_file: str  # file name under images/
    fs_type: str
    size_bytes: int
    config: dict[str, Any]
    created: float
    last_used: float
    unpacked_bytes: int = 0  # the tree it was built from (unpack.tree_bytes): what pulls are capped by

    def to_json(self) -> dict[str, Any]:
        return {
            "fs_file": self.fs_file,
            "fs_type": self.fs_type,
            "size_bytes": self.size_bytes,
            "config": self.config,
            "created": self.created,
            "last_used": self.last_used,
            "unpacked_bytes": self.unpacked_bytes,
        }

    @classmethod
    def from_json(cls, digest: str, data: dict[str, Any]) -> CacheEntry:
        return cls(
            digest=digest,
            fs_file=data["fs_file"],
            fs_type=data["fs_type"],
            size_bytes=data["size_bytes"],
            config=data["config"],
            created=data["created"],
            last_used=data["last_used"],
            # Entries from before the bound was recorded: the fs image is a close upper bound.
            unpacked_bytes=data.get("unpacked_bytes") or data["size_bytes"],
        )


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class ImageCache:
    def __init__(self, root: Path, *, qemu_group_id: int | None = None) -> None:
        self.root = root
        # Given QEMU's group (the host runs as root), only QEMU may traverse to a tenant's image
        # and read it; without it, QEMU runs as some other user and needs the "other" bits.
        self.qemu_group_id = qemu_group_id
        self.images_dir = root / "images"
        self.locks_dir = root / "locks"
        self.work_dir = root / "work"
        self.index_path = root / "index.json"
        self.index_lock_path = root / "index.lock"
        root.mkdir(parents=True, exist_ok=True)
        # QEMU runs as its own user and opens the read-only fs images: it may traverse root
        # and images/ (no listing); the unpack work dir, where hostile trees live, stays 0700.
        self.images_dir.mkdir(exist_ok=True)
        for directory in (root, self.images_dir):
            self._share_with_qemu(directory, with_group=0o710, without=0o711)
        for directory in (self.locks_dir, self.work_dir):
            directory.mkdir(mode=0o700, exist_ok=True)

    def _share_with_qemu(self, path: Path, *, with_group: int, without: int) -> None:
        if self.qemu_group_id is None:
            path.chmod(without)
            return
        os.chown(path, -1, self.qemu_group_id)
        path.chmod(with_group)

    @contextmanager
    def build_lock(self, digest: str) -> Iterator[None]:
        bucket = digest.split(":", 1)[1][:2]
        with file_lock(self.locks_dir / f"build-{bucket}.lock"):
            yield

    @contextmanager
    def locked_index(self) -> Iterator[dict[str, Any]]:
        """The index, locked; changes made to the yielded dict are written back atomically."""
        with file_lock(self.index_lock_path):
            index = self._read_index()
            before = json.dumps(index, sort_keys=True)
            yield index
            if json.dumps(index, sort_keys=True) != before:
                self._write_index(index)

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "images": {}, "references": {}}
        except json.JSONDecodeError:
            # Cannot happen through our atomic writes; if someone damaged it, start over:
            # unknown image files are swept as orphans on the next insert.
            logger.warning("image.cache.index_corrupt", extra={"path": str(self.index_path)})
            return {"version": INDEX_VERSION, "images": {}, "references": {}}
        if index.get("version") != INDEX_VERSION:
            return {"version": INDEX_VERSION, "images": {}, "references": {}}
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        temporary = self.root / f".index.json.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(index, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, self.index_path)
        directory_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    def image_path(self, entry: CacheEntry) -> Path:
        return self.images_dir / entry.fs_file

    def lookup(self, digest: str, reference: str) -> CacheEntry | None:
        """The cached entry for digest (marking it used), or None."""
        with self.locked_index() as index:
            data = index["images"].get(digest)
            if data is None:
                return None
            entry = CacheEntry.from_json(digest, data)
            path = self.image_path(entry)
            if not path.is_file() or path.stat().st_size != entry.size_bytes:
                del index["images"][digest]  # the file went away or was damaged: rebuild it
                return None
            data["last_used"] = time.time()
            index["references"][reference] = digest
            return CacheEntry.from_json(digest, data)

    def insert(
        self,
        *,
        digest: str,
        reference: str,
        built_file: Path,
        fs_type: str,
        config: dict[str, Any],
        max_cache_bytes: int,
        unpacked_bytes: int = 0,
    ) -> tuple[CacheEntry, list[str]]:
        """Move built_file into the cache, index it, evict others over the bound.
        Returns the entry and the evicted digests."""
        fs_file = f"{digest.split(':', 1)[1]}.{fs_type}"
        self._share_with_qemu(built_file, with_group=0o440, without=0o444)
        now = time.time()
        with self.locked_index() as index:
            os.rename(built_file, self.images_dir / fs_file)
            entry = CacheEntry(
                digest=digest,
                fs_file=fs_file,
                fs_type=fs_type,
                size_bytes=(self.images_dir / fs_file).stat().st_size,
                config=config,
                created=now,
                last_used=now,
                unpacked_bytes=unpacked_bytes,
            )
            index["images"][digest] = entry.to_json()
            index["references"][reference] = digest
            evicted = self._evict(index, keep_digest=digest, max_cache_bytes=max_cache_bytes)
            self._remove_orphans(index)
        return entry, evicted

    def _evict(self, index: dict[str, Any], *, keep_digest: str, max_cache_bytes: int) -> list[str]:
        total = sum(data["size_bytes"] for data in index["images"].values())
        candidates = sorted(
            (data["last_used"], digest) for digest, data in index["images"].items() if digest != keep_digest
        )
        evicted = []
        for _last_used, digest in candidates:
            if total <= max_cache_bytes:
                break
            data = index["images"].pop(digest)
            (self.images_dir / data["fs_file"]).unlink(missing_ok=True)
            total -= data["size_bytes"]
            evicted.append(digest)
        index["references"] = {
            reference: digest for reference, digest in index["references"].items() if digest in index["images"]
        }
        return evicted

    def _remove_orphans(self, index: dict[str, Any]) -> None:
        known = {data["fs_file"] for data in index["images"].values()}
        for path in self.images_dir.iterdir():
            if path.name not in known and IMAGE_FILE_PATTERN.match(path.name):
                path.unlink(missing_ok=True)

    def entries(self) -> list[CacheEntry]:
        with self.locked_index() as index:
            return [CacheEntry.from_json(d, data) for d, data in index["images"].items()]
