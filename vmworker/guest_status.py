"""What status() knows of an instance from its files (vmworker.runtime): the guest log read so far
(``LogProgress``: incremental, across rotated files, every byte the guest's and hostile: only
well-formed records are believed) and the end record (``ended.json``) checked before use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vmworker.driver.spec import PortForward
from vmworker.guestinit.protocol import RECORD_MAX_BYTES, GuestEvent, MalformedRecord, guest_events
from vmworker.log_files import FileStart, LogPosition
from vmworker.runtime_types import InstanceStatus

MAX_STATUS_ERRORS = 20


@dataclass
class LogProgress:
    """What status() has read of one guest log so far: up to ``offset`` (a line boundary)."""

    offset: int = 0
    inode: int = 0  # the file read, and its last bytes before offset: an instance made
    tail: bytes = b""  # again has a new log, whatever inode the filesystem gives it
    started: bool = False
    exit_code: int | None = None
    oom: bool = False
    errors: tuple[str, ...] = ()
    partial: bytes = b""  # the start of a line not whole yet (at most RECORD_MAX_BYTES)
    discarding: bool = False  # inside a line longer than a record may be: skip to its end
    malformed: int = 0  # records that were not well-formed (ignored), and how many were logged
    malformed_logged: int = 0
    malformed_logged_at: float = float("-inf")

    def read(self, data: bytes) -> None:
        """Takes the next bytes of the log: the events of the lines they complete."""
        buffer = self.partial + data
        complete = buffer.rfind(b"\n") + 1
        lines, self.partial = buffer[:complete], buffer[complete:]
        if self.discarding and complete:  # the rest of an overlong line is no record
            lines = lines[lines.find(b"\n") + 1 :]
            self.discarding = False
        elif self.discarding:
            self.partial = b""
        if len(self.partial) > RECORD_MAX_BYTES:  # no record is this long: drop it to its end
            self.partial, self.discarding = b"", True
            self.malformed += 1
        self.apply(guest_events(lines))

    def apply(self, events: Iterator[GuestEvent | MalformedRecord]) -> None:
        for event in events:
            if isinstance(event, MalformedRecord):
                self.malformed += 1
            elif event.name == "exit":
                self.exit_code = event.code
            elif event.name == "oom":
                self.oom = event.code == 1
            elif event.name == "started":
                self.started = True
            elif event.name == "error":
                self.errors = (*self.errors, event.value)[-MAX_STATUS_ERRORS:]


def progress_from(first: tuple[LogPosition, FileStart] | None) -> LogProgress:
    """Reading from the start of the oldest kept file, with what the files before it said."""
    if first is None:
        return LogProgress()
    position, start = first
    return LogProgress(
        offset=0,
        inode=position.inode,
        started=start.started,
        exit_code=start.exit_code,
        oom=start.oom,
        errors=start.errors[-MAX_STATUS_ERRORS:],
        partial=bytes.fromhex(start.carry),
        discarding=any(stream == "discard" for stream, _, _ in start.fragments),
    )


def instance_status_from(info: dict, *, state: str, exit_code: int | None, oom: bool, errors: tuple) -> InstanceStatus:
    return InstanceStatus(
        instance_id=info["instance_id"],
        name=info["name"],
        image=info["image"],
        state=state,
        exit_code=exit_code,
        oom=oom,
        errors=errors,
        ports=tuple(PortForward(**port) for port in info["ports"]),
        created_at=info["created_at"],
    )


def is_end_record(ended) -> bool:
    """What status() believes of an ended.json: the types and ranges _record_end writes."""
    return (
        isinstance(ended, dict)
        and ended.get("state") in ("exited", "lost", "running", "booting")
        and (ended.get("exit_code") is None or is_exit_code(ended.get("exit_code")))
        and isinstance(ended.get("oom"), bool)
        and isinstance(ended.get("errors"), list)
        and all(isinstance(error, str) for error in ended["errors"])
        and (ended.get("log_inode") is None or type(ended.get("log_inode")) is int)
    )


def is_exit_code(value) -> bool:
    return type(value) is int and 0 <= value <= 255
