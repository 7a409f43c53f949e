"""The cache index on its own: LRU order, orphans, damaged entries, atomic index writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from pathlib import Path

from vmworker.images.cache import ImageCache

CONFIG = {
    "entrypoint": [],
    "cmd": ["/bin/sh"],
    "env": [],
    "working_dir": "",
    "user": "",
    "exposed_ports": [],
}


def digest(character: str) -> str:
    return "sha256:" + character * 64


def built_file(cache: ImageCache, size_bytes: int) -> Path:
    fd, name = tempfile.mkstemp(prefix="built-", dir=cache.work_dir)
    with os.fdopen(fd, "wb") as built:
        built.write(b"x" * size_bytes)
    return Path(name)


def insert(cache: ImageCache, character: str, *, size_bytes: int = 100, bound: int = 10_000):
    return cache.insert(
        digest=digest(character),
        reference=f"example/{character}:latest",
        built_file=built_file(cache, size_bytes),
        fs_type="erofs",
        config=CONFIG,
        max_cache_bytes=bound,
    )


def test_lookup_marks_an_entry_used_so_eviction_takes_the_other(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "store")
    insert(cache, "a")
    insert(cache, "b")
    assert cache.lookup(digest("a"), "example/a:latest") is not None

    _entry, evicted = insert(cache, "c", bound=250)

    assert evicted == [digest("b")]
    assert sorted(entry.digest for entry in cache.entries()) == [digest("a"), digest("c")]
    assert sorted(path.name for path in cache.images_dir.iterdir()) == [
        "a" * 64 + ".erofs",
        "c" * 64 + ".erofs",
    ]
    index = json.loads(cache.index_path.read_text())
    assert set(index["references"]) == {"example/a:latest", "example/c:latest"}


def test_a_missing_or_damaged_image_file_is_a_miss(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "store")
    entry, _ = insert(cache, "a")
    cache.image_path(entry).chmod(0o644)
    cache.image_path(entry).write_bytes(b"truncated")

    assert cache.lookup(digest("a"), "example/a:latest") is None
    assert cache.entries() == []


def test_files_unknown_to_the_index_are_swept_on_insert(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "store")
    orphan = cache.images_dir / ("f" * 64 + ".erofs")
    orphan.write_bytes(b"left by a crash")
    unrelated = cache.images_dir / "README"
    unrelated.write_text("not ours to delete")

    insert(cache, "a")

    assert not orphan.exists()
    assert unrelated.exists()


def test_damaged_index_starts_empty_instead_of_failing(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "store")
    cache.index_path.write_text("{not json")

    assert cache.entries() == []
    insert(cache, "a")
    assert [entry.digest for entry in cache.entries()] == [digest("a")]


def _insert_many(root: str, character: str) -> None:
    cache = ImageCache(Path(root))
    for number in range(20):
        cache.insert(
            digest=f"sha256:{character * 62}{number:02d}",
            reference=f"example/{character}:{number}",
            built_file=built_file(cache, 10),
            fs_type="erofs",
            config=CONFIG,
            max_cache_bytes=10**9,
        )


def test_concurrent_processes_lose_no_index_updates(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ImageCache(root)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_insert_many, args=(str(root), c)) for c in "abc"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(ImageCache(root).entries()) == 60
    assert len(list((root / "images").iterdir())) == 60
