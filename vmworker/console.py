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

With ``max_bytes``, ``trim()`` keeps the log within its cap (vmworker.log_retention): it frees
the file's start up to a checkpoint, after saving that checkpoint (offset, seq, lines in pieces
and what the events said) as the log's trim point. Seqs stay the index among all the log's
output lines, freed ones included: a tail made after a worker restart starts at the trim point,
and a backlog that reaches before it answers from the trim point on, with ``truncated``.

No Django here.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path

from vmworker.guestinit.protocol import (
    MAX_SUMMARY_ERRORS,
    OUTPUT_LINE_MAX_CHARS,
    GuestEvent,
    GuestLogParser,
    OutputLine,
)
from vmworker.log_retention import TrimPoint, punch_hole, trim_point_load, trim_point_save

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


class GuestLogTail:
    """One guest.log: new lines as the guest writes them, and backlogs, both numbered by seq."""

    def __init__(
        self, path: Path, *, checkpoint_every_bytes: int = CHECKPOINT_EVERY_BYTES, max_bytes: int | None = None
    ):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._checkpoint_every = checkpoint_every_bytes
        point = None
        try:
            point = trim_point_load(self.path.parent, inode=self.path.stat().st_ino)
        except FileNotFoundError:
            pass
        point = point or TrimPoint(0, 0, 0, (), False, None, False, ())
        self.next_seq = point.seq
        self.exit_code: int | None = point.exit_code
        self._events = (point.started, point.exit_code, point.oom, point.errors)
        self._offset = point.offset  # bytes fed to the parser
        self._trimmed_to = point.offset
        self._parser = GuestLogParser.from_fragment_state(point.fragments, line_max_chars=LINE_MAX_CHARS)
        # Record boundaries, and the lines in pieces and the events' sum there: a parser restored
        # from that state may start at any of them.
        self._checkpoint_offsets = [point.offset]
        self._checkpoint_seqs = [point.seq]
        self._checkpoint_states: list[tuple] = [point.fragments]
        self._checkpoint_events: list[tuple] = [self._events]

    @property
    def boundary(self) -> int:
        """File offset just after the last whole record read."""
        return self._offset - self._parser.pending_bytes

    def has_unread(self) -> bool:
        try:
            return self.path.stat().st_size > self._offset
        except FileNotFoundError:
            return False

    def read(self, max_bytes: int = READ_MAX_BYTES) -> list[ConsoleLine]:
        """The lines completed by up to ``max_bytes`` new bytes of the file."""
        try:
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                data = log.read(max_bytes)
        except FileNotFoundError:
            return []
        if not data:
            return []
        lines: list[ConsoleLine] = []
        # Fed in checkpoint-sized pieces so that a big read still leaves checkpoints inside it.
        for start in range(0, len(data), self._checkpoint_every):
            piece = data[start : start + self._checkpoint_every]
            self._offset += len(piece)
            for record in self._parser.feed(piece):
                if isinstance(record, OutputLine):
                    lines.append(_console_line(self.next_seq, record))
                    self.next_seq += 1
                elif isinstance(record, GuestEvent):
                    self._apply(record)
            boundary = self.boundary
            far_enough = boundary - self._checkpoint_offsets[-1] >= self._checkpoint_every
            if far_enough:
                state = self._parser.fragment_state()
                if state == self._checkpoint_states[-1]:
                    state = self._checkpoint_states[-1]  # one copy for all checkpoints of a long line
                self._checkpoint_offsets.append(boundary)
                self._checkpoint_seqs.append(self.next_seq)
                self._checkpoint_states.append(state)
                self._checkpoint_events.append(self._events)
        return lines

    def read_and_trim(self, max_bytes: int = READ_MAX_BYTES) -> list[ConsoleLine]:
        lines = self.read(max_bytes)
        try:
            self.trim()
        except OSError:  # e.g. a filesystem without hole punching: the log stays as it is
            logger.warning("console.log_trim_failed", extra={"path": str(self.path)}, exc_info=True)
        return lines

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

    def trim(self) -> bool:
        """Keeps the file within ``max_bytes`` (plus what is not read yet): once what was read
        since the last trim point passes it, the newest checkpoint at least ``max_bytes // 2``
        back becomes the trim point and the file's blocks before it are freed."""
        if self.max_bytes is None or self.boundary - self._trimmed_to <= self.max_bytes:
            return False
        index = bisect.bisect_right(self._checkpoint_offsets, self.boundary - self.max_bytes // 2) - 1
        if index <= 0:
            return False  # no checkpoint far enough yet (one comes every checkpoint_every bytes)
        started, exit_code, oom, errors = self._checkpoint_events[index]
        point = TrimPoint(
            inode=self.path.stat().st_ino,
            offset=self._checkpoint_offsets[index],
            seq=self._checkpoint_seqs[index],
            fragments=self._checkpoint_states[index],
            started=started,
            exit_code=exit_code,
            oom=oom,
            errors=errors,
        )
        trim_point_save(self.path.parent, point)  # first: a reader starting over begins there
        punch_hole(self.path, point.offset)
        self._trimmed_to = point.offset
        for checkpoints in (
            self._checkpoint_offsets,
            self._checkpoint_seqs,
            self._checkpoint_states,
            self._checkpoint_events,
        ):
            del checkpoints[:index]
        return True

    def backlog(
        self, after_seq: int, *, max_lines: int = BACKLOG_MAX_LINES, max_bytes: int = BACKLOG_MAX_BYTES
    ) -> Backlog:
        """Lines with seq > after_seq among those read so far: the last ``max_lines`` of them,
        from at most ``max_bytes`` (plus one checkpoint interval) of the file."""
        end = self.boundary
        wanted = max(after_seq + 1, self.next_seq - max_lines, 0)
        if wanted >= self.next_seq:
            return Backlog((), None, self.next_seq, self.exit_code)
        # The latest checkpoint at or before the first wanted line (the trim point when that
        # line was freed)...
        index = max(bisect.bisect_right(self._checkpoint_seqs, wanted) - 1, 0)
        if end - self._checkpoint_offsets[index] > max_bytes:
            # ...unless that is too far back: then the first checkpoint within max_bytes of the end
            # (or the newest one, when even that is further back).
            index = bisect.bisect_left(self._checkpoint_offsets, end - max_bytes)
            index = min(index, len(self._checkpoint_offsets) - 1)
        offset, seq = self._checkpoint_offsets[index], self._checkpoint_seqs[index]
        parser = GuestLogParser.from_fragment_state(self._checkpoint_states[index], line_max_chars=LINE_MAX_CHARS)
        lines: list[ConsoleLine] = []
        with open(self.path, "rb") as log:
            log.seek(offset)
            while offset < end:
                data = log.read(min(READ_MAX_BYTES, end - offset))
                if not data:
                    break
                offset += len(data)
                for record in parser.feed(data):
                    if isinstance(record, OutputLine):
                        if seq >= wanted:
                            lines.append(_console_line(seq, record))
                        seq += 1
        lines = lines[-max_lines:]
        first = lines[0].seq if lines else self.next_seq
        truncated = first if first > after_seq + 1 else None
        return Backlog(tuple(lines), truncated, self.next_seq, self.exit_code)
