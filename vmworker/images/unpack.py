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
   here having written nothing. The stream's tar headers are read on the way (``TarEntryCounter``:
   headers and PAX records only, file data skipped): more entries than the limit has 4 KiB blocks
   is refused here too, so a layer of millions of empty files never becomes millions of inodes.
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
import re
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

TAR_BLOCK = 512
_ZERO_BLOCK = bytes(TAR_BLOCK)
# How Go's archive/tar (umoci's reader) walks a stream, which the count must follow exactly: a
# skip it does not make hides entries from the count. PAX extended headers ("x") and GNU long
# names/links ("L", "K") describe the next entry (at most 1 MiB of data each, Go's
# maxSpecialFileSize); a PAX "size" sets that entry's size; a global PAX header ("g") is an entry
# of its own to Go and forgets what came before it. Links, symlinks, devices, FIFOs and
# directories have no data whatever their size says, nor has an old-style regular file (type NUL)
# whose name ends in "/" (a directory to Go). An old GNU sparse file's extension blocks come
# before its data. The first zero block ends the layer (two end it; a zero block then anything
# else is refused).
_PAX_HEADER, _PAX_GLOBAL, _GNU_LONG_NAME, _GNU_LONG_LINK, _GNU_SPARSE = b"xgLKS"
_HEADER_ONLY_TYPES = frozenset(b"123456")
_TYPE_REG_A = 0
_SPECIAL_TYPES = frozenset((_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK))
MAX_PAX_HEADER_BYTES = 1024 * 1024
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(rb"[+-]?[0-9]+")


def _tar_number(field: bytes) -> int:
    """A tar header's numeric field as Go parses it: base-256 (signed) when its first bit is set,
    else octal text (NULs and spaces trimmed, cut at a NUL)."""
    if field[0] & 0x80:
        inverted = 0xFF if field[0] & 0x40 else 0
        value = 0
        for index, byte in enumerate(field):
            byte ^= inverted
            if index == 0:
                byte &= 0x7F
            if value >> 56:
                raise ImageInvalid("a layer has a tar header number that overflows")
            value = value << 8 | byte
        if value >> 63:
            raise ImageInvalid("a layer has a tar header number that overflows")
        return ~value if inverted else value
    text = field.strip(b" \0").split(b"\0", 1)[0]
    if not text:
        return 0
    if not _OCTAL.fullmatch(text):
        raise ImageInvalid("a layer has a tar header that is not valid")
    return int(text, 8)


def _c_string(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """A PAX header's "<length> key=value\\n" records, read by their lengths as Go reads them (a
    value may hold newlines). Malformed records are refused, as Go refuses them."""
    records: dict[bytes, bytes] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + 21)
        length_text = data[position:space] if space >= 0 else b""
        if not _DECIMAL.fullmatch(length_text):
            raise ImageInvalid("a layer has a PAX record that is not valid")
        length = int(length_text)
        end = position + length
        if length < 5 or end > len(data) or end - 1 <= space + 1 or data[end - 1] != ord("\n"):
            raise ImageInvalid("a layer has a PAX record that is not valid")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key or b"\0" in key:
            raise ImageInvalid("a layer has a PAX record that is not valid")
        records[key] = value
        position = end
    return records


def _pax_size(records: dict[bytes, bytes]) -> int | None:
    value = records.get(b"size", b"")
    if not value:
        return None  # absent, or empty: Go keeps the header's
    if not _DECIMAL.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
        raise ImageInvalid("a layer has a PAX size that is not valid")
    return int(value)


class TarEntryCounter:
    """Counts the entries of tar streams fed in chunks, reading only their 512-byte headers (and
    PAX records and GNU long names, at most MAX_PAX_HEADER_BYTES each) and skipping file data as
    Go's archive/tar does: memory stays bounded whatever the stream. Every entry becomes an
    inode umoci makes, each charged at least one block; counting them here stops a layer of
    millions of empty files (a few MiB compressed, nothing for the write counter to see) before
    umoci creates them. ``start_layer`` begins the next layer's stream (the count goes on).
    Raises only ImageInvalid (a header umoci would refuse as well), or OverLimit once there are
    more than max_entries."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries
        self.entries = 0
        self.start_layer()

    def start_layer(self) -> None:
        self._header = bytearray()
        self._skip = 0  # data bytes (with padding) of the current entry still to pass
        self._special = bytearray()  # a PAX header's records or a GNU long name, being collected
        self._special_left = 0
        self._special_kind = 0
        self._special_padding = 0
        self._sparse_data = -1  # >= 0: old GNU sparse extension blocks follow, then this much data
        self._ended = False
        self._forget_pending()

    def _forget_pending(self) -> None:
        self._pax: dict[bytes, bytes] = {}
        self._long_name: bytes | None = None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position, end = 0, len(view)
        while position < end and not self._ended:
            if self._special_left:
                take = min(self._special_left, end - position)
                self._special += view[position : position + take]
                self._special_left -= take
                position += take
                if not self._special_left:
                    self._on_special(bytes(self._special))
                continue
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            take = min(TAR_BLOCK - len(self._header), end - position)
            self._header += view[position : position + take]
            position += take
            if len(self._header) == TAR_BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_block(header)

    def _on_special(self, data: bytes) -> None:
        self._special.clear()
        if self._special_kind == _PAX_HEADER:
            self._pax = _pax_records(data)  # a second one replaces the first, as in Go
        elif self._special_kind == _GNU_LONG_NAME:
            self._long_name = _c_string(data)
        self._skip = self._special_padding

    def _on_block(self, block: bytes) -> None:
        if self._sparse_data >= 0:  # an old GNU sparse extension block; its flag says if another follows
            if not block[504]:
                self._skip, self._sparse_data = self._sparse_data, -1
            return
        if block == _ZERO_BLOCK:
            self._ended = True  # Go reads no entry after it (two end the archive; else refused)
            return
        size = _tar_number(block[124:136])
        kind = block[156]
        if kind in _SPECIAL_TYPES:
            if not 0 <= size <= MAX_PAX_HEADER_BYTES:
                raise ImageInvalid("a layer has a PAX header or long name over 1 MiB")
            self._special_kind, self._special_left = kind, size
            self._special_padding = -(-size // TAR_BLOCK) * TAR_BLOCK - size
            if not size:
                self._on_special(b"")
            return
        pax_size = _pax_size(self._pax)
        size = pax_size if pax_size is not None else size
        if kind in _HEADER_ONLY_TYPES or (kind == _TYPE_REG_A and self._name(block).endswith(b"/")):
            size = 0
        elif size < 0:
            raise ImageInvalid("a layer has a tar entry with a negative size")
        if kind == _PAX_GLOBAL:
            self._forget_pending()  # an entry to Go, which forgets the PAX records before it
        else:
            self.entries += 1
            if self.max_entries is not None and self.entries > self.max_entries:
                raise OverLimit
            self._forget_pending()
        padded = -(-size // TAR_BLOCK) * TAR_BLOCK
        if kind == _GNU_SPARSE and block[482]:
            self._sparse_data = padded
        else:
            self._skip = padded

    def _name(self, block: bytes) -> bytes:
        """The entry's name as Go settles it: a GNU long name, else a PAX path, else the header's
        (with its USTAR prefix: "prefix/name")."""
        if self._long_name:
            return self._long_name
        if self._pax.get(b"path"):
            return self._pax[b"path"]
        name = _c_string(block[0:100])
        if block[257:263] == b"ustar\0" and block[345]:
            return _c_string(block[345:500]) + b"/" + name
        return name


def _gzip_stream_bytes(blob: Path, budget_bytes: int, counter: TarEntryCounter) -> int:
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
                counter.feed(out)
                if inflater.eof:
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    if not data.strip(b"\0"):
                        data = b""  # zero padding after the last member
                else:
                    data = inflater.unconsumed_tail
    return total


def _zstd_stream_bytes(blob: Path, budget_bytes: int, timeout_s: float, counter: TarEntryCounter) -> int:
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
            counter.feed(chunk)
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


def layer_stream_bytes(
    blob: Path, *, budget_bytes: int, timeout_s: float, counter: TarEntryCounter | None = None
) -> int:
    """The layer's uncompressed tar size, counted without keeping it; OverLimit past budget_bytes.
    Its entries are counted into `counter`. The compression is sniffed from the bytes (what umoci
    would get wrong, it refuses anyway)."""
    counter = counter if counter is not None else TarEntryCounter()
    counter.start_layer()  # each layer is a tar stream of its own to umoci
    with open(blob, "rb") as handle:
        magic = handle.read(4)
    try:
        if magic.startswith(GZIP_MAGIC):
            return _gzip_stream_bytes(blob, budget_bytes, counter)
        if magic == ZSTD_MAGIC:
            return _zstd_stream_bytes(blob, budget_bytes, timeout_s, counter)
    except zlib.error as error:
        raise ImageInvalid(f"a gzip layer is corrupt: {error}") from error
    size = blob.stat().st_size  # an uncompressed tar
    if size > budget_bytes:
        raise OverLimit
    with open(blob, "rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            counter.feed(chunk)
    return size


def count_layers(layout: Path, layer_digests: tuple[str, ...], *, max_bytes: int, timeout_s: float) -> int:
    """Sum of every layer's uncompressed size (layers that overwrite each other count twice:
    an upper bound of what umoci writes, holes aside); OverLimit past max_bytes, or when the
    layers hold more entries than max_bytes has blocks (each inode costs at least one block in
    the tree measure, so this is the same limit, applied before umoci makes any inode)."""
    total = 0
    counter = TarEntryCounter(max_entries=max_bytes // BLOCK_BYTES)
    for digest in layer_digests:
        algorithm, hex_digest = digest.split(":", 1)
        blob = layout / "blobs" / algorithm / hex_digest
        total += layer_stream_bytes(blob, budget_bytes=max_bytes - total, timeout_s=timeout_s, counter=counter)
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
