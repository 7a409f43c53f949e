"""Per-instance log caps: how the host keeps guest.log and console.log bounded on its disk.

Contract: QEMU appends to both files for the VM's life (a file chardev opened O_APPEND, and the
serial console's descriptor that libvirtd hands it); the host never renames, truncates or
rewrites them. It frees what it no longer keeps by punching holes (``fallocate(PUNCH_HOLE |
KEEP_SIZE)``) into the start of the file: the blocks go back to the filesystem, every offset
stays what it was, and an append racing the punch can never be lost (a rename or
copy-truncate rotation loses what the writer appends between the copy and the truncate, and
QEMU would keep writing into a renamed file). What is kept: the newest ``max_bytes // 2`` to
``max_bytes`` of the file (plus what the host has not read yet); the apparent size keeps
growing, its allocated blocks do not.

guest.log is numbered (a console line's ``seq`` is its index among the log's output lines) and
read from its start by status() after a worker restart, so before punching, the host writes
``guest.log.trim.json`` (TRIM_FILE): the offset where the kept part starts (a record boundary),
the seq of the first line there, the line in pieces there, and what the punched events said
(started, exit, oom, errors). A reader that starts over begins there. The punch is idempotent,
so a crash between writing the file and punching only leaves more on disk.

No Django here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("vmworker.log_retention")

TRIM_FILE = "guest.log.trim.json"
BLOCK_BYTES = 4096
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def punch_hole(path: Path, end: int) -> None:
    """Frees the file's blocks before ``end`` (rounded down to a block): they read as zeros."""
    end -= end % BLOCK_BYTES
    if end <= 0:
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, end) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(fd)


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def trim_unnumbered_log(path: Path, max_bytes: int) -> bool:
    """console.log: nobody numbers its lines (the host reads its last few KiB), so once it holds
    more than ``max_bytes`` all but the newest ``max_bytes // 2`` are freed."""
    if allocated_bytes(path) <= max_bytes:
        return False
    punch_hole(path, os.stat(path).st_size - max_bytes // 2)
    logger.info("log_retention.trimmed", extra={"path": str(path)})
    return True


@dataclass(frozen=True)
class TrimPoint:
    """Where the kept part of a guest.log starts, and what its punched part said."""

    inode: int
    offset: int  # a record boundary; the file's bytes before it may be zeros
    seq: int  # the seq of the first output line at offset
    fragments: tuple[tuple[str, str, bool], ...]  # GuestLogParser.fragment_state() at offset
    started: bool
    exit_code: int | None
    oom: bool
    errors: tuple[str, ...]


def trim_point_save(directory: Path, point: TrimPoint) -> None:
    path = directory / TRIM_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(point)))
    os.replace(tmp, path)


def trim_point_load(directory: Path, *, inode: int) -> TrimPoint | None:
    """The trim point of the guest.log with ``inode`` (an instance made again has a new log), or
    None. A file that does not hold what trim_point_save writes counts as none."""
    try:
        data = json.loads((directory / TRIM_FILE).read_bytes())
        point = TrimPoint(
            inode=data["inode"],
            offset=data["offset"],
            seq=data["seq"],
            fragments=tuple((str(stream), str(text), bool(cut)) for stream, text, cut in data["fragments"]),
            started=data["started"],
            exit_code=data["exit_code"],
            oom=data["oom"],
            errors=tuple(str(error) for error in data["errors"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("log_retention.trim_point_invalid", extra={"directory": str(directory)})
        return None
    well_typed = (
        all(type(value) is int and value >= 0 for value in (point.inode, point.offset, point.seq))
        and type(point.started) is bool
        and type(point.oom) is bool
        and (point.exit_code is None or (type(point.exit_code) is int and 0 <= point.exit_code <= 255))
    )
    return point if well_typed and point.inode == inode else None
