"""Unpacking an OCI layout into a directory tree with umoci (never Python's tarfile), bounded.

As root, umoci unpacks for real (``umoci raw unpack``): ownership, modes (setuid included),
xattrs/file capabilities and device nodes come out exactly as the image says, because the guest
needs them. umoci resolves every entry, symlink and hardlink target inside the rootfs (securejoin),
so `..`, absolute names and writes through symlinks land inside the tree, and a hardlink whose
target does not exist inside the tree fails the unpack. What keeps the resulting setuid files and
device nodes away from the host is where the tree lives: in the store's 0700 root-only work dir,
for the seconds until the filesystem image is built, then deleted. Nothing on the host ever
executes or opens anything inside it; the guest sees it only through the read-only image.

Without root, ``--rootless`` is used (ownership lost, device nodes become empty files).

Size bound (``UnpackLimit``), enforced while unpacking, in three layers:
1. ``count_layers``: before umoci runs, every layer blob is streamed through its decompressor
   (zlib for gzip, the ``zstd`` tool for zstd; 1 MiB at a time, so memory stays bounded whatever
   the ratio) and the tar stream bytes are counted, stopping at the limit. A gzip bomb is refused
   here having written nothing.
2. umoci runs under ``prlimit --fsize`` (RLIMIT_FSIZE = the limit): no single file it writes,
   extends or truncates can pass the limit (the kernel answers EFBIG).
3. A watchdog kills umoci once it has written more than the limit. This is what catches what
   the stream count cannot see: a PAX/GNU sparse entry is a few bytes in the stream, but umoci
   writes every hole as real zero blocks (measured: a 10 KiB layer became 1 GiB on disk). It
   reads umoci's own write counter (``wchar`` in /proc/PID/io: every byte passed to write(),
   whatever file it went to) every 10 ms, O(1) whatever the tree. Where the kernel has no
   per-process I/O accounting it measures the tree instead (``tree_bytes``, every 2x its own
   walk time: measured 4x slower on a 20000-file image, which is why it is only the fallback).
   Hard links write no data; file metadata is bounded by the stream count (each entry is at
   least 512 bytes of it). When umoci is done, the tree is measured once, exactly: that is the
   size checked against the limit and reported (per inode, so hard links count once; each
   file as max(apparent size, allocated blocks) rounded up to 4 KiB, at least one block).
   The overshoot is what umoci writes in one poll, into the page cache (measured: ~30 MiB past
   a 16 MiB limit, 100 sparse files, killed within 25 ms); the work dir is removed right after.
The alternative, unpacking into a loop-mounted filesystem of the limit's size, enforces exactly
but needs loop devices and mounts in the worker (absent in many CI containers) and leaves a mount
behind if the worker dies; the three layers need neither.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from vmworker.images.errors import ImageError, ImageInvalid

UMOCI = "umoci"
ZSTD = "zstd"
PRLIMIT = "prlimit"
BLOCK_BYTES = 4096
READ_CHUNK_BYTES = 1024 * 1024
INFLATE_CHUNK_BYTES = 1024 * 1024
WATCH_INTERVAL_S = 0.01  # umoci writes zeros at up to ~1 GB/s here: ~10 MB per poll at most
# umoci's own writes besides file data (its error log on stderr) are small; this is their room.
WRITE_SLACK_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LIMIT_PLATFORM = "platform limit"
LIMIT_TENANT_QUOTA = "tenant disk quota"


@dataclass(frozen=True)
class UnpackLimit:
    max_bytes: int
    source: str  # LIMIT_PLATFORM | LIMIT_TENANT_QUOTA: named in the error the tenant sees


class OverLimit(Exception):
    """Internal: the count passed the limit (the store turns it into ImageUnpacksTooLarge)."""


def _umoci_message(stderr: str) -> str:
    lines = [line.strip(" \t•⨯") for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else "no error output")[:300]


# 1. The stream count ------------------------------------------------------------------------


def _gzip_stream_bytes(blob: Path, budget_bytes: int) -> int:
    """Decompressed bytes of a (possibly multi-member, as Go's reader accepts) gzip file."""
    total = 0
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    with open(blob, "rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            data = chunk
            while data:
                out = inflater.decompress(data, INFLATE_CHUNK_BYTES)
                total += len(out)
                if total > budget_bytes:
                    raise OverLimit
                if inflater.eof:
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    if not data.strip(b"\0"):
                        data = b""  # zero padding after the last member
                else:
                    data = inflater.unconsumed_tail
    return total


def _zstd_stream_bytes(blob: Path, budget_bytes: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    total = 0
    try:
        process = subprocess.Popen(
            [ZSTD, "-d", "-c", "-q", "--no-progress", str(blob)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except FileNotFoundError as error:
        raise ImageError("the image has zstd layers and this host has no zstd tool") from error
    try:
        assert process.stdout is not None
        while chunk := process.stdout.read(READ_CHUNK_BYTES):
            total += len(chunk)
            if total > budget_bytes:
                raise OverLimit
            if time.monotonic() > deadline:
                raise ImageError(f"decompressing a layer timed out after {timeout_s:.0f} s")
        if process.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
            raise ImageInvalid("a zstd layer is corrupt")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return total


def layer_stream_bytes(blob: Path, *, budget_bytes: int, timeout_s: float) -> int:
    """The layer's uncompressed tar size, counted without keeping it; OverLimit past budget_bytes.
    The compression is sniffed from the bytes (what umoci would get wrong, it refuses anyway)."""
    with open(blob, "rb") as handle:
        magic = handle.read(4)
    try:
        if magic.startswith(GZIP_MAGIC):
            return _gzip_stream_bytes(blob, budget_bytes)
        if magic == ZSTD_MAGIC:
            return _zstd_stream_bytes(blob, budget_bytes, timeout_s)
    except zlib.error as error:
        raise ImageInvalid(f"a gzip layer is corrupt: {error}") from error
    size = blob.stat().st_size  # an uncompressed tar
    if size > budget_bytes:
        raise OverLimit
    return size


def count_layers(layout: Path, layer_digests: tuple[str, ...], *, max_bytes: int, timeout_s: float) -> int:
    """Sum of every layer's uncompressed size (layers that overwrite each other count twice:
    an upper bound of what umoci writes, holes aside); OverLimit past max_bytes."""
    total = 0
    for digest in layer_digests:
        algorithm, hex_digest = digest.split(":", 1)
        blob = layout / "blobs" / algorithm / hex_digest
        total += layer_stream_bytes(blob, budget_bytes=max_bytes - total, timeout_s=timeout_s)
    return total


# 3. The tree measure --------------------------------------------------------------------------


def _charged_bytes(stat: os.stat_result) -> int:
    size = max(stat.st_size, stat.st_blocks * 512)
    return max(1, -(-size // BLOCK_BYTES)) * BLOCK_BYTES


def tree_bytes(root: Path, *, stop_above: int | None = None) -> int:
    """What the tree costs, per inode (see the module docstring); stops counting past stop_above."""
    total = 0
    seen: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # umoci is still moving things: the next poll sees it
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                key = (stat.st_dev, stat.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += _charged_bytes(stat)
            if stop_above is not None and total > stop_above:
                return total
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
    return total


# 2 + 3. umoci, bounded --------------------------------------------------------------------------


def limited_argv(argv: list[str], *, max_file_bytes: int) -> list[str]:
    """argv under RLIMIT_FSIZE (no file the command writes can pass max_file_bytes), and no core
    file (a C tool dies of SIGXFSZ at the limit: its core would land outside the work dir).
    prlimit(1) rather than preexec_fn: the worker has threads, and preexec_fn is unsafe with them."""
    return [PRLIMIT, f"--fsize={max_file_bytes}", "--core=0", "--", *argv]


def written_bytes(pid: int) -> int | None:
    """Bytes the process has passed to write() so far (all its threads), or None when the
    kernel does not account them (or the process is gone)."""
    try:
        with open(f"/proc/{pid}/io") as counters:
            for line in counters:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    return None


def _watch(pid: int, rootfs: Path, max_bytes: int) -> float:
    """OverLimit when umoci is past the limit; else the time until the next look."""
    written = written_bytes(pid)
    if written is not None:
        if written > max_bytes + WRITE_SLACK_BYTES:
            raise OverLimit
        return WATCH_INTERVAL_S
    if not rootfs.exists():
        return WATCH_INTERVAL_S
    walk_started = time.monotonic()
    if tree_bytes(rootfs, stop_above=max_bytes) > max_bytes:
        raise OverLimit
    return max(WATCH_INTERVAL_S, 2 * (time.monotonic() - walk_started))


def unpack_rootfs(
    layout: Path, tag: str, rootfs: Path, *, image: str, timeout_s: float, max_bytes: int | None = None
) -> int:
    """Unpacks and returns the tree's size (tree_bytes); OverLimit (umoci killed) past max_bytes."""
    argv = [UMOCI, "--log", "error", "raw", "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout}:{tag}", str(rootfs)]
    if max_bytes is not None:
        argv = limited_argv(argv, max_file_bytes=max_bytes + BLOCK_BYTES)
    deadline = time.monotonic() + timeout_s
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(layout.parent)},
    )
    stderr_bytes = b""
    interval_s = WATCH_INTERVAL_S
    try:
        while True:
            try:
                _, stderr_bytes = process.communicate(timeout=interval_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if max_bytes is not None:
                interval_s = _watch(process.pid, rootfs, max_bytes)
            if time.monotonic() > deadline:
                raise ImageError(f"unpacking {image} timed out after {timeout_s:.0f} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    measured = tree_bytes(rootfs) if rootfs.exists() else 0
    if max_bytes is not None and measured > max_bytes:
        raise OverLimit  # written between the last poll and umoci's exit (or its EFBIG failure)
    if process.returncode != 0:
        stderr = stderr_bytes.decode(errors="replace")
        if max_bytes is not None and (process.returncode == -signal.SIGXFSZ or "file too large" in stderr.lower()):
            raise OverLimit  # Go ignores SIGXFSZ and reports EFBIG; the signal is handled in case
        raise ImageInvalid(
            f"image {image} has a layer that cannot be unpacked safely: {_umoci_message(stderr)}",
            detail=stderr[-2000:],
        )
    return measured
