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

No Django here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from vmworker.guestinit.protocol import OUTPUT_LINE_MAX_CHARS, GuestEvent, GuestLogParser, OutputLine

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

    def __init__(self, path: Path, *, checkpoint_every_bytes: int = CHECKPOINT_EVERY_BYTES):
        self.path = Path(path)
        self.next_seq = 0
        self.exit_code: int | None = None
        self._offset = 0  # bytes fed to the parser
        self._parser = GuestLogParser(line_max_chars=LINE_MAX_CHARS)
        self._checkpoint_every = checkpoint_every_bytes
        # Record boundaries, and the lines in pieces there: a parser restored from that state may
        # start at any of them.
        self._checkpoint_offsets = [0]
        self._checkpoint_seqs = [0]
        self._checkpoint_states: list[tuple] = [()]

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
                elif isinstance(record, GuestEvent) and record.name == "exit":
                    self.exit_code = record.code
            boundary = self.boundary
            far_enough = boundary - self._checkpoint_offsets[-1] >= self._checkpoint_every
            if far_enough:
                state = self._parser.fragment_state()
                if state == self._checkpoint_states[-1]:
                    state = self._checkpoint_states[-1]  # one copy for all checkpoints of a long line
                self._checkpoint_offsets.append(boundary)
                self._checkpoint_seqs.append(self.next_seq)
                self._checkpoint_states.append(state)
        return lines

    def backlog(
        self, after_seq: int, *, max_lines: int = BACKLOG_MAX_LINES, max_bytes: int = BACKLOG_MAX_BYTES
    ) -> Backlog:
        """Lines with seq > after_seq among those read so far: the last ``max_lines`` of them,
        from at most ``max_bytes`` (plus one checkpoint interval) of the file."""
        end = self.boundary
        wanted = max(after_seq + 1, self.next_seq - max_lines, 0)
        if wanted >= self.next_seq:
            return Backlog((), None, self.next_seq, self.exit_code)
        # The latest checkpoint at or before the first wanted line...
        index = bisect.bisect_right(self._checkpoint_seqs, wanted) - 1
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
