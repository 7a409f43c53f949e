"""Layers that unpack to far more than they weigh, for the unpack-limit tests.

- a gzip bomb: a file of zeros; umoci gzips the layer when it is added (~1000:1)
- a sparse layer: GNU tar's PAX sparse entries, a few KiB whatever the holes (umoci writes the
  holes as real zero blocks, so a count of the decompressed stream alone cannot see them)
- hard links: many names for one file (its data is stored, and must be counted, once)

Python's tarfile only WRITES the zero-file layer here (GNU tar writes the sparse one, which
tarfile cannot); unpacking is umoci's job.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from tests.support.oci_images import BuiltImage, build_image_from_layer_tars

MIB = 1024 * 1024


class _Zeros(io.RawIOBase):
    """size_bytes of zeros, read in chunks (a bomb's content never sits in memory)."""

    def __init__(self, size_bytes: int) -> None:
        self.left = size_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def zero_file_layer(path: Path, *, size_bytes: int, name: str = "zeros.bin", links: int = 0) -> Path:
    """One file of size_bytes zeros, plus `links` hard links to it."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as layer:
        info = tarfile.TarInfo(name)
        info.size = size_bytes
        info.mtime = 1_700_000_000
        layer.addfile(info, io.BufferedReader(_Zeros(size_bytes), buffer_size=MIB))
        for index in range(links):
            link = tarfile.TarInfo(f"link-{index}")
            link.type = tarfile.LNKTYPE
            link.linkname = name
            link.mtime = 1_700_000_000
            layer.addfile(link)
    return path


def sparse_layer(path: Path, *, hole_bytes: int, files: int = 1, links: int = 0) -> Path:
    """`files` sparse files of hole_bytes each (one data byte at the end), plus `links` hard
    links to the first, written by GNU tar as PAX sparse entries."""
    source = path.parent / f"{path.stem}-source"
    source.mkdir()
    names = []
    for index in range(files):
        sparse = source / f"holes-{index}"
        with open(sparse, "wb") as handle:
            handle.truncate(hole_bytes)
            handle.seek(hole_bytes)
            handle.write(b"x")
        names.append(sparse.name)
    for index in range(links):
        os.link(source / names[0], source / f"link-{index}")
        names.append(f"link-{index}")
    subprocess.run(
        ["tar", "--sparse", "--format=pax", "--mtime=@1700000000", "-cf", str(path), "-C", str(source), *names],
        check=True,
        timeout=120,
    )
    for name in names:
        (source / name).unlink()
    source.rmdir()
    return path


def image_from_layer(name: str, layer_tar: Path, cache_dir: Path) -> BuiltImage:
    built = build_image_from_layer_tars(name, [layer_tar], cache_dir)
    layer_tar.unlink()  # the layout holds it, gzipped
    return built


# Hand-made tar headers: what a hostile layer can say that no tar writer would -------------------

TAR_BLOCK = 512


def tar_header(name: bytes, kind: bytes, size: int, *, link: bytes = b"", prefix: bytes = b"") -> bytes:
    """A USTAR header with a valid checksum (Go's reader, so umoci, checks it), whatever its size
    field says about the entry's type."""
    header = bytearray(TAR_BLOCK)
    header[0 : len(name)] = name
    header[100:108] = b"0000755\0"
    header[108:116] = header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = kind
    header[157 : 157 + len(link)] = link
    header[257:265] = b"ustar\x0000"
    header[345 : 345 + len(prefix)] = prefix
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One length-prefixed PAX record "<length> key=value\\n" (the value may hold newlines)."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_header(*records: bytes) -> bytes:
    data = b"".join(records)
    return tar_header(b"PaxHeaders/x", b"x", len(data)) + data + bytes(-len(data) % TAR_BLOCK)


def empty_file_headers(count: int, *, stem: bytes = b"f") -> bytes:
    return b"".join(tar_header(b"%s%d" % (stem, index), b"0", 0) for index in range(count))


def hidden_files_layer(path: Path, *, files: int) -> Path:
    """`files` empty files behind a directory header whose size field spans their headers: Go's
    reader (so umoci) reads no data after a directory, whatever its size says, and makes every
    one of them."""
    path.write_bytes(tar_header(b"d/", b"5", files * TAR_BLOCK) + empty_file_headers(files) + bytes(2 * TAR_BLOCK))
    return path
