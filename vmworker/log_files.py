"""A guest's log as one stream of bytes across virtlogd's rotation, read by inode.

Why rotation, and whose: libvirt's QEMU driver (qemu.conf ``stdio_handler = "logd"``, the
default) backs every file chardev of a domain, the serial console's console.log and the log
port's guest.log alike, with virtlogd: QEMU writes into a pipe and virtlogd appends to the file,
rotating it once it holds ``max_size`` bytes (virtlogd.conf, 2 MiB by default): guest.log becomes
guest.log.0, .0 becomes .1 and so on, and the file past ``max_backups`` (3 by default) is
deleted. That is the per-instance cap, (1 + max_backups) x max_size per log whatever the guest
writes, enforced by the one process that writes the file (no copy-truncate race with QEMU, and a
worker restart changes nothing). ``log_caps()`` reads what it is on this host.

Contract for readers: a position is (inode, offset); ``log_read`` returns the bytes after it in
that file, wherever rotation has renamed it, and moves on to the next newer file when it ends.
Each file's start has a saved state (SEQ_INDEX_FILE, written by the console agent when it reaches
a file): the seq of its first output line, the line in pieces there and what the events before
it said, so a reader that starts over (a worker restart) begins at the oldest kept file with the
numbering and the status it had. No Django here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vmworker.private_files import write_private

logger = logging.getLogger("vmworker.log_files")

ROTATED_MAX = 16  # guest.log.0 .. guest.log.15 are looked for (virtlogd's max_backups is 3 by default)
LIST_ATTEMPTS = 4
SEQ_INDEX_FILE = "guest.log.seqs.json"
VIRTLOGD_CONF = Path("/etc/libvirt/virtlogd.conf")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
VIRTLOGD_DEFAULT_MAX_SIZE = 2 * 1024 * 1024
VIRTLOGD_DEFAULT_MAX_BACKUPS = 3


@dataclass(frozen=True)
class LogPosition:
    inode: int
    offset: int


def log_files(path: Path) -> list[tuple[int, Path]]:
    """The kept files of a rotated log, oldest first, as (inode, path). A rotation renames them
    all at once; a listing that changed while it was taken is taken again."""
    previous = None
    for _ in range(LIST_ATTEMPTS):
        files = []
        for number in reversed(range(ROTATED_MAX)):
            _add_file(files, path.with_name(f"{path.name}.{number}"))
        _add_file(files, path)
        if files == previous:
            break
        previous = files
    return files


def _add_file(files: list, path: Path) -> None:
    try:
        files.append((os.stat(path).st_ino, path))
    except FileNotFoundError:
        pass


def log_read(path: Path, position: LogPosition, max_bytes: int) -> tuple[bytes, LogPosition | None]:
    """Up to ``max_bytes`` after ``position`` in its file. At the end of a file that a newer one
    follows: no bytes, and the newer file's start. None: the position's file is gone (rotated
    out, or the instance was made again)."""
    files = log_files(path)
    index = next((i for i, (inode, _) in enumerate(files) if inode == position.inode), None)
    if index is None:
        return b"", None
    try:
        with open(files[index][1], "rb") as log:
            if os.fstat(log.fileno()).st_ino != position.inode:
                return b"", position  # rotated between the listing and the open: again next time
            log.seek(position.offset)
            data = log.read(max_bytes)
    except FileNotFoundError:
        return b"", position
    if data:
        return data, LogPosition(position.inode, position.offset + len(data))
    if index + 1 < len(files):
        return b"", LogPosition(files[index + 1][0], 0)
    return b"", position


def has_unread(path: Path, position: LogPosition) -> bool:
    """Cheap (one stat): the current file differs from the position's, or grew past it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return False
    return stat.st_ino != position.inode or stat.st_size > position.offset


@dataclass(frozen=True)
class FileStart:
    """What a reader needs to start at the beginning of one file of the log."""

    inode: int
    seq: int  # the seq of the file's first output line
    fragments: tuple[tuple[str, str, bool], ...]  # GuestLogParser.fragment_state() there
    started: bool  # what the events in the files before it said
    exit_code: int | None
    oom: bool
    errors: tuple[str, ...]
    carry: str = ""  # hex: the start of a record the file before it ended in (virtlogd may cut one)


def file_starts_load(directory: Path) -> list[FileStart]:
    """The saved file starts; a file that does not hold what file_starts_save writes counts as none."""
    try:
        data = json.loads((directory / SEQ_INDEX_FILE).read_bytes())
        starts = [
            FileStart(
                inode=entry["inode"],
                seq=entry["seq"],
                fragments=tuple((str(s), str(t), bool(c)) for s, t, c in entry["fragments"]),
                started=entry["started"],
                exit_code=entry["exit_code"],
                oom=entry["oom"],
                errors=tuple(str(error) for error in entry["errors"]),
                carry=str(entry.get("carry", "")),
            )
            for entry in data
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("log_files.seq_index_invalid", extra={"directory": str(directory)})
        return []
    return [start for start in starts if _well_typed(start)]


def _well_typed(start: FileStart) -> bool:
    return (
        type(start.inode) is int
        and type(start.seq) is int
        and start.seq >= 0
        and type(start.started) is bool
        and type(start.oom) is bool
        and (start.exit_code is None or (type(start.exit_code) is int and 0 <= start.exit_code <= 255))
        and len(start.carry) <= 2 * 8192
        and all(char in "0123456789abcdef" for char in start.carry)
    )


def file_starts_save(directory: Path, starts: list[FileStart]) -> None:
    path = directory / SEQ_INDEX_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(tmp, json.dumps([asdict(start) for start in starts]).encode())
    os.replace(tmp, path)


def file_start_record(path: Path, start: FileStart) -> None:
    """Adds a file's start to the saved ones, dropping those of files no longer kept."""
    kept = {inode for inode, _ in log_files(path)}
    starts = [old for old in file_starts_load(path.parent) if old.inode in kept and old.inode != start.inode]
    file_starts_save(path.parent, [*starts, start])


def first_position(path: Path) -> tuple[LogPosition, FileStart] | None:
    """Where a reader that starts over begins: the oldest kept file with a saved start; else,
    a log never rotated: its start with seq 0; else (its earlier files went while no agent read
    them) the oldest kept file, numbered on from the last seq saved. None: no log yet."""
    files = log_files(path)
    if not files:
        return None
    saved = {start.inode: start for start in file_starts_load(path.parent)}
    for inode, _ in files:
        if inode in saved:
            return LogPosition(inode, 0), saved[inode]
    rotated = len(files) > 1 or files[0][1] != path
    base = max((start.seq for start in saved.values()), default=0) if rotated else 0
    return LogPosition(files[0][0], 0), FileStart(files[0][0], base, (), False, None, False, ())


def log_caps(*, virtlogd_conf: Path = VIRTLOGD_CONF, qemu_conf: Path = QEMU_CONF) -> dict:
    """What bounds a log on this host: virtlogd's max_size and max_backups when QEMU's file
    chardevs go through virtlogd (stdio_handler "logd", the default), else nothing."""
    handler = _conf_value(qemu_conf, "stdio_handler") or "logd"
    max_size = _conf_value(virtlogd_conf, "max_size")
    max_backups = _conf_value(virtlogd_conf, "max_backups")
    return {
        "through_virtlogd": handler == "logd",
        "max_size_bytes": int(max_size) if max_size and max_size.isdigit() else VIRTLOGD_DEFAULT_MAX_SIZE,
        "max_backups": int(max_backups) if max_backups and max_backups.isdigit() else VIRTLOGD_DEFAULT_MAX_BACKUPS,
    }


def _conf_value(path: Path, name: str) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(rf"^\s*{name}\s*=\s*\"?([^\"\s#]+)", text, re.MULTILINE)
    return match.group(1) if match else None
