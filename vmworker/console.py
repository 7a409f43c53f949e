"""The console's host side: an instance's guest.log read as numbered output lines.

Contract: ``seq`` of an output line is its 0-based index among the output lines of the
instance's guest.log (``out``/``err`` records; ``out+``/``err+`` pieces join into the line they
end, see vmworker.guestinit.protocol). The file is the record, so a seq names the same line
across reconnects, page reloads and worker restarts.

``GuestLogTail`` reads one log incrementally, a bounded number of bytes per call, and keeps a
sparse index of (offset, seq, lines in pieces) checkpoints at record boundaries, also inside a
line the app has not ended yet (the parser keeps at most LINE_MAX_CHARS of it, so that state is
small, and one state is shared by the checkpoints of one long line). ``backlog(after_seq)`` then
reads at most about ``BACKLOG_MAX_BYTES`` of the file, never the whole of it: the last
``BACKLOG_MAX_LINES`` lines after ``after_seq``, and where older ones were cut the seq of the
first line it gives (the console's ``truncated`` message).

The log may be several files: virtlogd rotates guest.log past its max_size (vmworker.log_files).
Seqs run on across the files, positions are (inode, offset), and a backlog answers from the
oldest kept file at most (``truncated`` when older lines were rotated out).

No Django here.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vmworker.guestinit.protocol import (
    MAX_SUMMARY_ERRORS,
    OUTPUT_LINE_MAX_CHARS,
    GuestEvent,
    GuestLogParser,
    OutputLine,
)
from vmworker.log_files import (
    ROTATED_MAX,
    FileStart,
    LogPosition,
    file_start_record,
    first_position,
    has_unread,
    log_files,
    log_read,
)

logger = logging.getLogger("vmworker.console")

BACKLOG_MAX_LINES = 1000
BACKLOG_MAX_BYTES = 1024 * 1024
READ_MAX_BYTES = 1024 * 1024  # per read() call: one agent tick never reads more of one log
CHECKPOINT_EVERY_BYTES = 64 * 1024
LINE_MAX_CHARS = OUTPUT_LINE_MAX_CHARS  # longer lines are cut for the browser; the file keeps them whole


@dataclass(frozen=True)
class ConsoleLine:
    seq: int
    stream: str  # "stdout" | "stderr"
    text: str

    def as_message(self) -> dict:
        return {"seq": self.seq, "stream": self.stream, "text": self.text}


@dataclass(frozen=True)
class Backlog:
    lines: tuple[ConsoleLine, ...]
    # Set when lines after the asked seq were left out: the seq of the first line given
    # (or of the next line to come when none is given).
    truncated_first_seq: int | None
    next_seq: int  # the seq the next line of this log will get
    exit_code: int | None  # the guest's exit record, once read


def _console_line(seq: int, record: OutputLine) -> ConsoleLine:
    if not record.cut and len(record.text) <= LINE_MAX_CHARS:
        return ConsoleLine(seq, record.stream, record.text)
    text = record.text[:LINE_MAX_CHARS] + " [cut]"
    return ConsoleLine(seq, record.stream, text)


@dataclass(frozen=True)
class _Checkpoint:
    """A place a parser may start at: a record boundary in one file of the log (or a file's
    start, with the start of the record the previous file ended in as ``carry``)."""

    position: LogPosition
    seq: int
    fragments: tuple  # GuestLogParser.fragment_state() there
    events: tuple  # (started, exit_code, oom, errors) of everything before it
    carry: bytes = b""
    file_number: int = 0  # which file of the tail's reading (0, 1, ...): inodes are reused


class GuestLogTail:
    """One guest.log: new lines as the guest writes them, and backlogs, both numbered by seq.

    The log is the stream of its kept files across virtlogd's rotation (vmworker.log_files),
    followed by inode; reaching a file's start, the tail saves that file's start state (seq,
    lines in pieces, events) so a tail made after a worker restart numbers on from the oldest
    kept file. Lines in files rotated out before any tail read them are not numbered (the
    console then says ``truncated``)."""

    def __init__(self, path: Path, *, checkpoint_every_bytes: int = CHECKPOINT_EVERY_BYTES):
        self.path = Path(path)
        self.next_seq = 0
        self.exit_code: int | None = None
        self._events: tuple = (False, None, False, ())
        self._position: LogPosition | None = None  # after the bytes fed to the parser
        self._parser = GuestLogParser(line_max_chars=LINE_MAX_CHARS)
        self._checkpoint_every = checkpoint_every_bytes
        self._checkpoints: list[_Checkpoint] = []
        self._file_number = 0

    def has_unread(self) -> bool:
        if self._position is None:
            return self.path.exists()
        return has_unread(self.path, self._position)

    def _begin(self) -> bool:
        if self._position is not None:
            return True
        first = first_position(self.path)
        if first is None:
            return False
        position, start = first
        self._start_at(position, start, seq=start.seq)
        return True

    def _start_at(self, position: LogPosition, start: FileStart, *, seq: int) -> None:
        carry = bytes.fromhex(start.carry)
        self._parser = GuestLogParser.from_fragment_state(start.fragments, line_max_chars=LINE_MAX_CHARS)
        self._parser.feed(carry)
        self._position = position
        self.next_seq = seq
        self._events = (start.started, start.exit_code, start.oom, start.errors)
        self.exit_code = start.exit_code if self.exit_code is None else self.exit_code
        self._file_number += 1
        self._checkpoints = [_Checkpoint(position, seq, start.fragments, self._events, carry, self._file_number)]
        self._save_file_start(self._checkpoints[0])

    def _save_file_start(self, checkpoint: _Checkpoint) -> None:
        started, exit_code, oom, errors = checkpoint.events
        start = FileStart(
            checkpoint.position.inode,
            checkpoint.seq,
            checkpoint.fragments,
            started,
            exit_code,
            oom,
            errors,
            carry=checkpoint.carry.hex(),
        )
        try:
            file_start_record(self.path, start)
        except OSError:  # the numbering of a later restart suffers, not this console
            logger.warning("console.file_start_save_failed", extra={"path": str(self.path)}, exc_info=True)

    def read(self, max_bytes: int = READ_MAX_BYTES) -> list[ConsoleLine]:
        """The lines completed by up to ``max_bytes`` new bytes of the log."""
        lines: list[ConsoleLine] = []
        if not self._begin():
            return lines
        budget = max_bytes
        for _ in range(ROTATED_MAX + 2):  # bounded: each file switch takes one turn
            data, position = log_read(self.path, self._position, budget)
            if position is None:
                self._after_loss()
                continue
            if not data:
                if position == self._position:
                    break
                self._position = position  # the next newer file's start
                self._file_number += 1
                checkpoint = self._checkpoint_here(carry=self._parser.pending_data())
                self._checkpoints.append(checkpoint)
                self._save_file_start(checkpoint)
                continue
            lines += self._feed(data)
            budget -= len(data)
            if budget <= 0:
                break
        return lines

    def _after_loss(self) -> None:
        """The file being read is gone (rotated out before it was read to its end): number on
        from the oldest kept file."""
        logger.warning("console.log_lines_lost", extra={"path": str(self.path), "seq": self.next_seq})
        files = log_files(self.path)
        if not files:
            self._position = None
            return
        started, exit_code, oom, errors = self._events
        start = FileStart(files[0][0], self.next_seq, (), started, exit_code, oom, errors)
        self._start_at(LogPosition(files[0][0], 0), start, seq=self.next_seq)

    def _feed(self, data: bytes) -> list[ConsoleLine]:
        lines: list[ConsoleLine] = []
        # Fed in checkpoint-sized pieces so that a big read still leaves checkpoints inside it.
        for begin in range(0, len(data), self._checkpoint_every):
            piece = data[begin : begin + self._checkpoint_every]
            self._position = LogPosition(self._position.inode, self._position.offset + len(piece))
            for record in self._parser.feed(piece):
                if isinstance(record, OutputLine):
                    lines.append(_console_line(self.next_seq, record))
                    self.next_seq += 1
                elif isinstance(record, GuestEvent):
                    self._apply(record)
            boundary = self._position.offset - self._parser.pending_bytes
            last = self._checkpoints[-1].position
            if boundary < 0 or (last.inode == self._position.inode and boundary - last.offset < self._checkpoint_every):
                continue  # a record begun in the file before, or not far enough yet
            checkpoint = self._checkpoint_here()
            if checkpoint.fragments == self._checkpoints[-1].fragments:  # one copy for all checkpoints of a long line
                checkpoint = dataclasses.replace(checkpoint, fragments=self._checkpoints[-1].fragments)
            self._checkpoints.append(checkpoint)
        return lines

    def _checkpoint_here(self, *, carry: bytes = b"") -> _Checkpoint:
        offset = self._position.offset - (0 if carry else self._parser.pending_bytes)
        position = LogPosition(self._position.inode, offset)
        fragments = self._parser.fragment_state()
        return _Checkpoint(position, self.next_seq, fragments, self._events, carry, self._file_number)

    def _apply(self, event: GuestEvent) -> None:
        started, exit_code, oom, errors = self._events
        if event.name == "started":
            started = True
        elif event.name == "exit":
            exit_code = self.exit_code = event.code
        elif event.name == "oom":
            oom = event.code == 1
        elif event.name == "error":
            errors = (*errors, event.value)[-MAX_SUMMARY_ERRORS:]
        self._events = (started, exit_code, oom, errors)

    def backlog(
        self, after_seq: int, *, max_lines: int = BACKLOG_MAX_LINES, max_bytes: int = BACKLOG_MAX_BYTES
    ) -> Backlog:
        """Lines with seq > after_seq among those read so far and still kept: the last
        ``max_lines`` of them, from at most ``max_bytes`` (plus one checkpoint interval) of the log."""
        wanted = max(after_seq + 1, self.next_seq - max_lines, 0)
        if self._position is None or wanted >= self.next_seq:
            return Backlog((), None, self.next_seq, self.exit_code)
        kept = {inode: path for inode, path in log_files(self.path)}
        # The kept files are the ones this tail read last (by their order: virtlogd deletes a file
        # and makes the next, which may get the deleted one's inode).
        inodes = list(kept)
        newer = len(inodes) - 1 - inodes.index(self._position.inode) if self._position.inode in kept else 0
        oldest_kept = self._file_number - (len(inodes) - 1 - newer)
        self._checkpoints = [c for c in self._checkpoints if c.file_number >= oldest_kept] or self._checkpoints[-1:]
        # A record begun in the file before ends in this one: up to this file's start is whole records.
        end_offset = max(self._position.offset - self._parser.pending_bytes, 0)
        end = LogPosition(self._position.inode, end_offset)
        seqs = [checkpoint.seq for checkpoint in self._checkpoints]
        # The latest checkpoint at or before the first wanted line (the oldest kept, when that
        # line is gone)...
        index = max(bisect.bisect_right(seqs, wanted) - 1, 0)
        distances = [_distance(checkpoint.position, end, kept) for checkpoint in self._checkpoints]
        if distances[index] > max_bytes:
            # ...unless that is too far back: then the first checkpoint within max_bytes of the end
            # (or the newest one, when even that is further back).
            index = next((i for i, distance in enumerate(distances) if distance <= max_bytes), len(distances) - 1)
        checkpoint = self._checkpoints[index]
        parser = GuestLogParser.from_fragment_state(checkpoint.fragments, line_max_chars=LINE_MAX_CHARS)
        parser.feed(checkpoint.carry)
        seq = checkpoint.seq
        position = checkpoint.position
        lines: list[ConsoleLine] = []
        for _ in range(64 * (ROTATED_MAX + 2)):  # bounded: at most max_bytes plus a file switch or two
            if position == end:
                break
            limit = READ_MAX_BYTES if position.inode != end.inode else min(READ_MAX_BYTES, end.offset - position.offset)
            data, position = log_read(self.path, position, limit)
            if position is None:
                break
            for record in parser.feed(data):
                if isinstance(record, OutputLine):
                    if seq >= wanted:
                        lines.append(_console_line(seq, record))
                    seq += 1
            if not data and position.inode == end.inode and position.offset >= end.offset:
                break
        lines = lines[-max_lines:]
        first = lines[0].seq if lines else self.next_seq
        truncated = first if first > after_seq + 1 else None
        return Backlog(tuple(lines), truncated, self.next_seq, self.exit_code)


def _distance(start: LogPosition, end: LogPosition, kept: dict[int, Path]) -> int:
    """Bytes from ``start`` to ``end`` across the kept files (sizes as they are now)."""
    if start.inode == end.inode:
        return end.offset - start.offset
    inodes = list(kept)
    try:
        first, last = inodes.index(start.inode), inodes.index(end.inode)
    except ValueError:
        return 0
    total = end.offset - start.offset
    for inode in inodes[first:last]:
        try:
            total += os.stat(kept[inode]).st_size
        except FileNotFoundError:
            pass
    return total
