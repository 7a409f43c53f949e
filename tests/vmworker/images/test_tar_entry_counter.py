"""TarEntryCounter (vmworker/images/unpack.py): counts a layer's entries from its tar headers
while the stream is counted, before umoci makes any inode. Against tars written by GNU tar
(long names, links, PAX), a PAX size override, and random bytes (it never raises anything but
ImageInvalid, and OverLimit past its bound)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.size_bomb_images import empty_file_headers, pax_header, pax_record, tar_header
from vmworker.images.errors import ImageInvalid
from vmworker.images.unpack import TAR_BLOCK, OverLimit, TarEntryCounter


def feed_in_chunks(data: bytes, seed: int, counter: TarEntryCounter | None = None) -> TarEntryCounter:
    counter = counter or TarEntryCounter()
    chunks = random.Random(seed)
    position = 0
    while position < len(data):
        size = chunks.choice([1, 7, 511, 512, 513, 4096, 65536])
        counter.feed(data[position : position + size])
        position += size
    return counter


@pytest.fixture
def gnu_tar(tmp_path: Path):
    def make(tar_format: str) -> tuple[bytes, int]:
        tree = tmp_path / f"tree-{tar_format}"
        (tree / "dir" / "sub").mkdir(parents=True)
        for index in range(40):
            (tree / "dir" / f"file-{index}").write_bytes(os.urandom(index * 100))
        long_name = "n" * 150
        (tree / "dir" / "sub" / long_name).write_text("long")
        (tree / "empty").touch()
        os.symlink("dir/file-1", tree / "symlink")
        os.link(tree / "dir" / "file-2", tree / "hardlink")
        archive = subprocess.run(
            ["tar", f"--format={tar_format}", "-cf", "-", "-C", str(tree), "."], capture_output=True, check=True
        ).stdout
        listed = subprocess.run(["tar", "-tf", "-"], input=archive, capture_output=True, check=True).stdout
        return archive, len(listed.splitlines())

    return make


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])  # long names: GNU "L" entries, PAX records
def test_it_counts_what_tar_lists_whatever_the_chunking(gnu_tar, tar_format) -> None:
    archive, listed = gnu_tar(tar_format)
    assert listed == 47  # ".", dir, dir/sub, 40 files, the long name, empty, symlink, hardlink
    for seed in range(5):
        assert feed_in_chunks(archive, seed).entries == listed


def _header(name: bytes, size: int, kind: bytes) -> bytes:
    header = bytearray(TAR_BLOCK)
    header[0 : len(name)] = name
    header[124:136] = f"{size:011o}\0".encode()
    header[156:157] = kind
    header[257:263] = b"ustar\0"
    return bytes(header)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % TAR_BLOCK)


def test_a_pax_size_record_sets_the_size_of_the_entry_that_follows() -> None:
    """umoci (Go) reads a PAX "size=" over the header's own: so does the counter, or the file's
    data (here: something that looks like 1000 headers) would be counted as entries."""
    fake_headers = b"".join(_header(f"fake-{i}".encode(), 0, b"0") for i in range(1000))
    record = b"size=%d\n" % len(fake_headers)
    record = b"%d %s" % (len(record) + 3, record)
    stream = _header(b"pax", len(record), b"x") + _padded(record)
    stream += _header(b"real", 0, b"0") + fake_headers + bytes(2 * TAR_BLOCK)
    assert feed_in_chunks(stream, 1).entries == 1


def test_past_its_bound_it_stops_with_over_limit() -> None:
    stream = b"".join(_header(f"f{i}".encode(), 0, b"0") for i in range(101))
    with pytest.raises(OverLimit):
        feed_in_chunks(stream, 2, TarEntryCounter(max_entries=100))
    assert feed_in_chunks(stream[: 100 * TAR_BLOCK], 2, TarEntryCounter(max_entries=100)).entries == 100


def test_a_pax_header_over_its_cap_is_refused() -> None:
    with pytest.raises(ImageInvalid):
        TarEntryCounter().feed(_header(b"pax", 2 * 1024 * 1024, b"x"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=2048), max_size=12), st.integers(0, 3))
def test_any_bytes_give_a_count_or_image_invalid(chunks: list[bytes], seed: int) -> None:
    counter = TarEntryCounter(max_entries=1_000_000)
    try:
        for chunk in chunks:
            counter.feed(chunk)
    except ImageInvalid:
        return
    assert 0 <= counter.entries <= sum(len(chunk) for chunk in chunks) // TAR_BLOCK + 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=TAR_BLOCK, max_size=TAR_BLOCK), st.integers(0, 255))
def test_hostile_headers_never_raise_anything_else(header: bytes, kind: int) -> None:
    hostile = bytearray(header)
    hostile[156] = kind
    try:
        TarEntryCounter().feed(bytes(hostile) + bytes(TAR_BLOCK))
    except ImageInvalid:
        pass


# What Go's archive/tar (so umoci) reads that a naive header walk skips: each case hides N empty
# files from a counter that trusts the size field or splits PAX records on newlines. The counts
# are what umoci 0.4.7 made of these exact streams (find | wc -l in its rootfs, checked by hand).

HIDDEN = 20
END = bytes(2 * TAR_BLOCK)


@pytest.mark.parametrize(
    "case,stream,made",
    [
        # A directory, symlink or hard link has no data in Go's reader: its size field is ignored.
        ("dir-size", tar_header(b"d/", b"5", HIDDEN * TAR_BLOCK) + empty_file_headers(HIDDEN) + END, HIDDEN + 1),
        (
            "symlink-size",
            tar_header(b"s", b"2", HIDDEN * TAR_BLOCK, link=b"t") + empty_file_headers(HIDDEN) + END,
            HIDDEN + 1,
        ),
        (
            "link-size",
            tar_header(b"t0", b"0", 0)
            + tar_header(b"h", b"1", HIDDEN * TAR_BLOCK, link=b"t0")
            + empty_file_headers(HIDDEN)
            + END,
            HIDDEN + 2,
        ),
        # An old-style regular file (type NUL) whose name ends in "/" is a directory to Go.
        ("rega-dir", tar_header(b"a/", b"\0", HIDDEN * TAR_BLOCK) + empty_file_headers(HIDDEN) + END, HIDDEN + 1),
        # ... and so is one with an empty name and a USTAR prefix ("prefix/" + "").
        (
            "rega-prefix",
            tar_header(b"", b"\0", HIDDEN * TAR_BLOCK, prefix=b"p") + empty_file_headers(HIDDEN) + END,
            HIDDEN + 1,
        ),
        # ... or a GNU long name ending in "/".
        (
            "rega-longname",
            tar_header(b"././@LongLink", b"L", 4)
            + b"ln/\0"
            + bytes(TAR_BLOCK - 4)
            + tar_header(b"x", b"\0", HIDDEN * TAR_BLOCK)
            + empty_file_headers(HIDDEN)
            + END,
            HIDDEN + 1,
        ),
        # A PAX value may hold newlines: a "size=" line inside a path is part of the path.
        (
            "pax-newline",
            pax_header(pax_record(b"path", b"p\n" + pax_record(b"size", b"%d" % (HIDDEN * TAR_BLOCK))))
            + tar_header(b"r", b"0", 0)
            + empty_file_headers(HIDDEN)
            + END,
            HIDDEN + 1,
        ),
        # A PAX size on a directory is ignored as its header's is.
        (
            "pax-size-dir",
            pax_header(pax_record(b"size", b"%d" % (HIDDEN * TAR_BLOCK)))
            + tar_header(b"d/", b"5", 0)
            + empty_file_headers(HIDDEN)
            + END,
            HIDDEN + 1,
        ),
    ],
)
def test_it_counts_every_entry_go_reads(case: str, stream: bytes, made: int) -> None:
    for seed in range(3):
        assert feed_in_chunks(stream, seed).entries >= made, case


def test_the_parse_state_ends_with_each_layer(tmp_path: Path) -> None:
    """Each layer is a tar stream of its own to umoci: what one layer leaves open (a directory's
    size at its end, junk after its end-of-archive) must not swallow the next layer's entries."""
    from vmworker.images.unpack import count_layers

    first_layers = {
        "dir-at-end": tar_header(b"d/", b"5", 10**9),
        "junk-after-end": tar_header(b"a", b"0", 0) + END + b"junk" * 25,
        "huge-after-end": tar_header(b"a", b"0", 0) + END + tar_header(b"big", b"0", 10**9),
    }
    second = empty_file_headers(HIDDEN, stem=b"g") + END
    for case, first in first_layers.items():
        layout = tmp_path / case
        (layout / "blobs" / "sha256").mkdir(parents=True)
        (layout / "blobs" / "sha256" / ("1" * 64)).write_bytes(first)
        (layout / "blobs" / "sha256" / ("2" * 64)).write_bytes(second)
        with pytest.raises(OverLimit):
            # HIDDEN entries in the second layer alone are over a bound of HIDDEN - 1 entries.
            count_layers(
                layout, ("sha256:" + "1" * 64, "sha256:" + "2" * 64), max_bytes=(HIDDEN - 1) * 4096, timeout_s=60
            )
