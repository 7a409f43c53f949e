"""The guest protocol: what the HyperVM init says to the host, and how the host stops it.

Channels (virtio-serial ports on one ``virtio-serial-pci`` controller, matched by
name in the guest through /sys/class/virtio-ports, never by number):

``io.hypervm.log`` (LOG_PORT_NAME), guest -> host, **file-backed** on the host
    (libvirt ``<channel type='file'>``, written by virtlogd and rotated by it, see
    vmworker.log_files). The durable record of
    one VM run, one record per line, in the order things happened::

        init <ms>          /init began (guest CLOCK_MONOTONIC, ms since kernel start)
        started <ms>       execve of the app succeeded (a close-on-exec pipe proves it)
        out <text>         one line the app wrote to stdout (without its newline)
        err <text>         one line the app wrote to stderr
        out+ <text>        a 4 KiB piece of a longer stdout line; the line continues in
        err+ <text>        the next out/out+ (err/err+) record
        stopping <ms>      the host asked to stop: SIGTERM sent to the app
        killing <ms>       stop_grace_s passed: SIGKILL sent
        error <text>       the init failed (bad config, rootfs not found, exec failure...)
        oom <0|1>          1 when the kernel's OOM killer ran during the app's life
        exit <code>        always the last record: the app's exit code, 128+signal when it
                           was killed; 125 init failure, 126 cannot execute, 127 not found

    App text is arbitrary bytes without "\\n" (decode leniently); because every line
    starts with a tag, an app cannot forge an event. A stream's unterminated last
    line is sent as a complete record when the app exits. After ``exit`` the guest
    powers off (ACPI): with ``on_poweroff=destroy`` the domain disappears.
    Output can be cut short only when the app leaves children that keep its pipes
    open: the init drains for 300 ms after the app exits, then reports ``exit``.

    The host treats every byte of this file as hostile (root in the guest owns the port and
    the init's memory): parsing never raises, a record longer than RECORD_MAX_BYTES is dropped
    whole (one MalformedRecord with a short sample), and an event is believed only when its
    value is well-formed and in range (``exit`` 0-255, ``oom`` 0 or 1, times 0 to
    MONOTONIC_MS_MAX with at most 6 decimals, ``error`` text without control characters and
    at most EVENT_TEXT_MAX_CHARS); anything else is a MalformedRecord, counted, never fatal.

``io.hypervm.control`` (CONTROL_PORT_NAME), both ways, **unix socket** on the host
    (QEMU ``-chardev socket,server=on,wait=off``; the host connects to it).
    Host -> guest: ``stop\\n`` (STOP_COMMAND) -> SIGTERM to the app, SIGKILL after
    ``stop_grace_s``; unknown lines are ignored. Guest -> host: the same event lines as
    on the log port (not the app output), best-effort: dropped while no host is
    connected, so a worker that restarts reads the log file, not this socket.

    Host -> guest: ``exec <id> <timeout_ms> <hex of the command>\\n`` (exec_request) runs
    ``/bin/sh -c <command>`` in the container: same root, env, user and working dir as
    the app, in its own process group, stdio on /dev/null, at most EXEC_MAX_RUNNING at
    once. The guest answers on this port only (never in the log) with one line
    (parse_exec_result)::

        exec-result <id> exit <code>     the command ended: its exit code (128+signal)
        exec-result <id> timeout         timeout_ms passed: its process group was SIGKILLed
        exec-result <id> error <text>    it never ran (no /bin/sh in the image, bad request,
                                         too many running...)

    ``<id>`` is 1-32 of ``[A-Za-z0-9-]`` chosen by the host; a result can arrive on a later
    connection than its request (the host went away), so the host matches it by id. Only
    one host connection is served at a time (QEMU's chardev): keep exec connections short.

    Host -> guest, shell sessions (a PTY in the container, for ``exec`` shells and one-shot
    commands; the same root, env, user and working dir as the app, plus ``TERM`` for a
    terminal and ``HOSTNAME`` when the app's env has none; at most SHELL_MAX_SESSIONS open)::

        sh-open <id> <rows> <cols> tty [<hex command>]   /bin/sh -i (or -c command) on a PTY
        sh-open <id> <rows> <cols> run <hex command>     /bin/sh -c command, stdin /dev/null,
                                                         the PTY raw (output bytes as written)
        sh-in <id> <base64>        bytes typed (at most SHELL_CHUNK_BYTES a line); Ctrl-C is
                                   byte 3, turned into SIGINT by the PTY's line discipline
        sh-resize <id> <rows> <cols>   TIOCSWINSZ: the shell gets SIGWINCH
        sh-ack <id> <bytes>        the host has passed on this many more bytes of output
        sh-close <id>              SIGHUP to the session, SIGKILL one second later

    Guest -> host::

        sh-opened <id>             the shell was forked
        sh-out <id> <base64>       output (1-SHELL_CHUNK_BYTES bytes); at most
                                   SHELL_WINDOW_BYTES are ever unacked per session: past
                                   that the guest stops reading the PTY (the shell blocks)
        sh-exit <id> <code>        the shell ended (128+signal when killed): the last line
        sh-error <id> <text>       it never ran, or the request was refused: the last line

    Rows and cols are 1-SHELL_DIMENSION_MAX; ids as for exec. Input the shell does not read
    is kept up to 64 KiB a session, the rest dropped. When the host hangs up, every session
    ends (SIGHUP, then SIGKILL) and what the guest had queued for the port is dropped. The
    host parses every ``sh-`` line as hostile (parse_shell_message: never raises, bounded).

Console (ttyS0, ``console=ttyS0``): ``hvinit: error: <text>`` lines, and everything
when the log port is missing. A SIGTERM/SIGINT delivered to the init itself
(e.g. ctrl-alt-del) counts as ``stop`` too.

If the init itself ever dies the kernel panics; ``panic=-1`` in KERNEL_CMDLINE makes
it reboot at once, which the host maps to destroy (``on_reboot=destroy``, or QEMU
``-no-reboot``). The VM never hangs waiting for the host.

What the host (driver) must give the guest, as tests/support/guest_qemu.py does:

- direct kernel boot: the cloud kernel, ``build_initramfs(...)``, KERNEL_CMDLINE;
  ``on_poweroff``/``on_reboot``/``on_crash`` = destroy; memory >= 96 MiB (the Debian
  cloud kernel does not even start in 64 MiB);
- virtio-blk (``bus='virtio'``) raw disks: the config disk (``write_config_disk``)
  with ``<serial>`` CONFIG_DISK_SERIAL, read-only; the image's rootfs with
  ``<serial>`` = GuestConfig.rootfs_serial (<= 20 chars), read-only (the init mounts
  it read-only anyway, ext4 with ``noload``, so a shared image is never written);
- one virtio-serial controller with two ports: ``<channel type='file'>`` target
  virtio name LOG_PORT_NAME, and ``<channel type='unix'><source mode='bind'>``
  target virtio name CONTROL_PORT_NAME (QEMU listens, the host connects);
- ``<serial type='file'>`` (ttyS0) for the console log;
- for a network: a virtio-net NIC (user-mode: 10.0.2.15/24 via 10.0.2.2); set
  GuestNetwork.mac when there is more than one NIC, else the init uses eth0.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LOG_PORT_NAME = "io.hypervm.log"
CONTROL_PORT_NAME = "io.hypervm.control"
STOP_COMMAND = b"stop\n"
EXEC_MAX_COMMAND_BYTES = 4095  # hvinit.c EXEC_MAX_COMMAND, less its NUL
EXEC_MAX_RUNNING = 4
EXEC_RESULT_TAG = b"exec-result"

# console=ttyS0: the per-instance console log. quiet loglevel=3: serial output is slow
# under TCG. panic=-1: a dead init reboots at once, and the host turns reboot into
# destroy. The rest only shortens boot (measured under TCG): acpi=noirq skips ACPI PCI
# IRQ routing, which cost ~220 ms per virtio device at virtio_pci probe (virtio uses
# MSI-X anyway); cryptomgr.notests skips crypto self-tests; tsc/timer/i8042/uart
# options skip probes a HyperVM has no use for.
KERNEL_CMDLINE = (
    "console=ttyS0 quiet loglevel=3 panic=-1 acpi=noirq cryptomgr.notests"
    " tsc=reliable no_timer_check i8042.noaux i8042.nokbd 8250.nr_uarts=1"
    " random.trust_cpu=on"
)

EXIT_INIT_FAILURE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

_EVENT_NAMES = frozenset({"init", "waiting", "started", "stopping", "killing", "error", "oom", "exit"})
_EVENT_TAGS = frozenset(name.encode() for name in _EVENT_NAMES)
_STREAM_TAGS = {
    "out": ("stdout", True),
    "err": ("stderr", True),
    "out+": ("stdout", False),
    "err+": ("stderr", False),
}
# hvinit writes records of at most 4200 bytes (send_output's buffer; events 1 KiB): a longer
# line is not the init's, and is dropped whole without being kept.
RECORD_MAX_BYTES = 8 * 1024
EVENT_TEXT_MAX_CHARS = 1024
MAX_SUMMARY_ERRORS = 20
MALFORMED_SAMPLE_BYTES = 128  # what a MalformedRecord keeps of the line, for the log
EXIT_CODE_MAX = 255  # exit codes and 128+signal (signals 1-64) both fit in a byte
MONOTONIC_MS_MAX = 10**12  # ~31 years of guest uptime: anything larger is not a clock
_MS_PATTERN = re.compile(rb"[0-9]{1,13}(\.[0-9]{1,6})?")
_EXIT_PATTERN = re.compile(rb"[0-9]{1,3}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_CHARS_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STREAM_TAG_BYTES = frozenset(tag.encode() for tag in _STREAM_TAGS)
# A line the app never ends (hvinit sends it as 4 KiB ``out+`` pieces forever) keeps at most this
# much in the parser; the rest is dropped and the line, when it ends, comes out cut.
OUTPUT_LINE_MAX_CHARS = 16 * 1024


@dataclass(frozen=True)
class OutputLine:
    """One line of app output; ``stream`` is "stdout" or "stderr". ``cut``: the parser kept only
    the first ``line_max_chars`` of it (the log file still holds it whole)."""

    stream: str
    text: str
    cut: bool = False


@dataclass(frozen=True)
class GuestEvent:
    """An event line; ``value`` is the text after the name ("" when none). The parser makes
    one only from a well-formed record, so ``monotonic_ms`` and ``code`` never raise on it."""

    name: str
    value: str

    @property
    def monotonic_ms(self) -> float:
        """For init/started/stopping/killing: the guest's CLOCK_MONOTONIC in ms."""
        return float(self.value)

    @property
    def code(self) -> int:
        """For exit (the exit code) and oom (0 or 1)."""
        return int(self.value)


@dataclass(frozen=True)
class MalformedRecord:
    """A line that is not a well-formed protocol record: the first MALFORMED_SAMPLE_BYTES of it
    (for the log), and its length."""

    raw: bytes
    length: int = -1  # -1: len(raw)

    @property
    def size(self) -> int:
        return len(self.raw) if self.length < 0 else self.length


def _malformed(line: bytes) -> MalformedRecord:
    if len(line) <= MALFORMED_SAMPLE_BYTES:
        return MalformedRecord(line)
    return MalformedRecord(line[:MALFORMED_SAMPLE_BYTES], len(line))


def safe_text(data: bytes, *, max_chars: int | None = None, keep_newlines: bool = False) -> str:
    """Guest bytes as text a database, a log or a page takes: UTF-8 decoded leniently, control
    characters (NUL included, which PostgreSQL refuses; ESC, so no terminal sequence) replaced
    by U+FFFD; tabs kept, and newlines when asked."""
    text = data.decode("utf-8", "replace")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    pattern = _CONTROL_CHARS_BUT_NEWLINE if keep_newlines else _CONTROL_CHARS
    return pattern.sub("\ufffd", text)


def parse_event(name: str, value: bytes) -> GuestEvent | MalformedRecord:
    """An event record, checked: ``name`` must be an event name (see _EVENT_NAMES)."""
    if name == "exit":
        if _EXIT_PATTERN.fullmatch(value) and int(value) <= EXIT_CODE_MAX:
            return GuestEvent(name, value.decode("ascii"))
    elif name == "oom":
        if value in (b"0", b"1"):
            return GuestEvent(name, value.decode("ascii"))
    elif name == "error":
        return GuestEvent(name, safe_text(value, max_chars=EVENT_TEXT_MAX_CHARS))
    elif _MS_PATTERN.fullmatch(value) and float(value) <= MONOTONIC_MS_MAX:
        return GuestEvent(name, value.decode("ascii"))
    return _malformed(name.encode() + b" " + value)


GuestRecord = OutputLine | GuestEvent | MalformedRecord


class GuestLogParser:
    """Incremental parser for the log port's bytes (feed chunks as the file grows).

    Fragments (``out+``) are joined into one OutputLine, keeping at most ``line_max_chars`` of
    it (memory stays bounded whatever the app writes). Partial lines wait for more bytes;
    ``close()`` flushes what is left when the VM is gone. ``fragment_state()`` /
    ``from_fragment_state()`` save and restore the lines in pieces at a record boundary, so a
    reader may resume in the middle of a long line.
    """

    def __init__(self, *, line_max_chars: int = OUTPUT_LINE_MAX_CHARS) -> None:
        self._buffer = b""
        self._discarding = False  # inside a record longer than RECORD_MAX_BYTES: drop to its end
        self._line_max_chars = line_max_chars
        self._fragments: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._fragment_chars = {"stdout": 0, "stderr": 0}
        self._fragment_cut = {"stdout": False, "stderr": False}
        self.malformed_count = 0

    def feed(self, data: bytes) -> list[GuestRecord]:
        buffer = self._buffer + data
        records: list[GuestRecord] = []
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False  # the end of the overlong record, reported already
            elif len(line) > RECORD_MAX_BYTES:
                records.append(_malformed(line))
            else:
                records.extend(self._parse_line(line))
        rest = buffer[start:]
        if self._discarding:
            rest = b""
        elif len(rest) > RECORD_MAX_BYTES:
            records.append(_malformed(rest))
            self._discarding = True
            rest = b""
        self._buffer = rest
        self.malformed_count += sum(isinstance(record, MalformedRecord) for record in records)
        return records

    @property
    def pending_bytes(self) -> int:
        """Bytes fed that are not a whole record yet (the start of a line still being written)."""
        return len(self._buffer)

    def pending_data(self) -> bytes:
        """The start of a record not whole yet (at most RECORD_MAX_BYTES): feed it to a parser
        restored from fragment_state() to carry on from here."""
        return self._buffer

    @property
    def in_fragmented_line(self) -> bool:
        """True while an ``out+``/``err+`` line waits for its end: no line boundary here."""
        return any(self._fragments.values()) or any(self._fragment_cut.values())

    def fragment_state(self) -> tuple[tuple[str, str, bool], ...]:
        """The lines in pieces now, as (stream, text so far, cut): immutable, at most
        ``line_max_chars`` per stream; ("discard", "", True) while dropping an overlong record.
        Only meaningful at a record boundary (``pending_bytes`` not yet parsed are not in it)."""
        state = tuple(
            (stream, "".join(pieces), self._fragment_cut[stream])
            for stream, pieces in self._fragments.items()
            if pieces or self._fragment_cut[stream]
        )
        return (*state, ("discard", "", True)) if self._discarding else state

    @classmethod
    def from_fragment_state(
        cls, state: tuple[tuple[str, str, bool], ...], *, line_max_chars: int = OUTPUT_LINE_MAX_CHARS
    ) -> GuestLogParser:
        parser = cls(line_max_chars=line_max_chars)
        for stream, text, cut in state:
            if stream == "discard":
                parser._discarding = True
                continue
            parser._fragments[stream] = [text] if text else []
            parser._fragment_chars[stream] = len(text)
            parser._fragment_cut[stream] = cut
        return parser

    def close(self) -> list[GuestRecord]:
        records = list(self._parse_line(self._buffer)) if self._buffer else []
        self._buffer = b""
        self._discarding = False
        for stream in self._fragments:
            if self._fragments[stream] or self._fragment_cut[stream]:
                records.append(self._end_line(stream, ""))
        return records

    def _end_line(self, stream: str, text: str) -> OutputLine:
        self._add_piece(stream, text)
        line = OutputLine(stream, "".join(self._fragments[stream]), cut=self._fragment_cut[stream])
        self._fragments[stream] = []
        self._fragment_chars[stream] = 0
        self._fragment_cut[stream] = False
        return line

    def _add_piece(self, stream: str, text: str) -> None:
        room = self._line_max_chars - self._fragment_chars[stream]
        if len(text) > room:
            text = text[: max(room, 0)]
            self._fragment_cut[stream] = True
        if text:
            self._fragments[stream].append(text)
            self._fragment_chars[stream] += len(text)

    def _parse_line(self, line: bytes) -> Iterator[GuestRecord]:
        tag, separator, rest = line.partition(b" ")
        name = tag.decode("ascii", "replace")
        if name in _STREAM_TAGS:
            stream, line_complete = _STREAM_TAGS[name]
            if self._fragment_cut[stream]:
                text = ""  # already full: what follows is dropped without decoding it
            else:
                text = rest.decode("utf-8", "replace")
            if not line_complete:
                self._add_piece(stream, text)
                return
            yield self._end_line(stream, text)
        elif name in _EVENT_NAMES:
            yield parse_event(name, rest)
        else:
            yield _malformed(line)


@dataclass(frozen=True)
class GuestRunSummary:
    """What one finished (or still running) VM run reported, read from its log."""

    output: tuple[OutputLine, ...]
    init_ms: float | None
    started_ms: float | None
    exit_code: int | None  # None while the guest has not reported exit
    oom: bool
    errors: tuple[str, ...]
    malformed: int = 0  # records that were not well-formed (ignored)

    @property
    def init_to_exec_ms(self) -> float | None:
        if self.init_ms is None or self.started_ms is None:
            return None
        return self.started_ms - self.init_ms


def summarize_records(records: Iterable[GuestRecord]) -> GuestRunSummary:
    output: list[OutputLine] = []
    errors: list[str] = []
    init_ms = started_ms = None
    exit_code = None
    oom = False
    malformed = 0
    for record in records:
        if isinstance(record, OutputLine):
            output.append(record)
        elif isinstance(record, MalformedRecord):
            malformed += 1
        elif isinstance(record, GuestEvent):
            if record.name == "init":
                init_ms = record.monotonic_ms
            elif record.name == "started":
                started_ms = record.monotonic_ms
            elif record.name == "exit":
                exit_code = record.code
            elif record.name == "oom":
                oom = record.code == 1
            elif record.name == "error":
                errors.append(record.value)
    return GuestRunSummary(
        output=tuple(output),
        init_ms=init_ms,
        started_ms=started_ms,
        exit_code=exit_code,
        oom=oom,
        errors=tuple(errors[-MAX_SUMMARY_ERRORS:]),
        malformed=malformed,
    )


def guest_events(data: bytes) -> Iterator[GuestEvent | MalformedRecord]:
    """The event records among complete log lines, skipping app output without decoding it
    (what a status poll needs from a log that may hold megabytes of output); an event record
    that is not well-formed, a line over RECORD_MAX_BYTES or without a known tag comes out as
    a MalformedRecord. ``data`` should start at a line start (a cut first line is malformed)."""
    for line in data.split(b"\n"):
        tag, _, rest = line.partition(b" ")
        if len(line) > RECORD_MAX_BYTES:
            yield _malformed(line)
        elif tag in _EVENT_TAGS:
            yield parse_event(tag.decode("ascii"), rest)
        elif tag not in _STREAM_TAG_BYTES and line:
            yield _malformed(line)


def parse_guest_log(data: bytes) -> GuestRunSummary:
    """Parses a whole log-port file (e.g. after the VM powered off)."""
    parser = GuestLogParser()
    return summarize_records([*parser.feed(data), *parser.close()])


class ExecRequestInvalid(ValueError):
    """A command the guest would refuse: empty, too long, or holding a NUL byte."""


def exec_request(request_id: str, command: str, timeout_s: float) -> bytes:
    """The control-port line that runs ``/bin/sh -c command`` in the guest."""
    encoded = command.encode()
    if not encoded or b"\0" in encoded or len(encoded) > EXEC_MAX_COMMAND_BYTES:
        raise ExecRequestInvalid(f"a command must be 1-{EXEC_MAX_COMMAND_BYTES} bytes without NUL")
    timeout_ms = max(1, min(86_400_000, round(timeout_s * 1000)))
    return f"exec {request_id} {timeout_ms} {encoded.hex()}\n".encode()


@dataclass(frozen=True)
class ExecResult:
    """The guest's answer to one exec request."""

    request_id: str
    outcome: str  # "exit" | "timeout" | "error"
    exit_code: int | None = None
    message: str = ""


def parse_exec_result(line: bytes) -> ExecResult | None:
    """An ``exec-result`` line (without its newline), else None (an event mirrored on the port)."""
    tag, _, rest = line.rstrip(b"\r").partition(b" ")
    if tag != EXEC_RESULT_TAG:
        return None
    request_id, _, rest = safe_text(rest[:RECORD_MAX_BYTES]).partition(" ")
    outcome, _, detail = rest.partition(" ")
    if outcome == "exit" and _EXIT_PATTERN.fullmatch(detail.encode()) and int(detail) <= EXIT_CODE_MAX:
        return ExecResult(request_id, "exit", exit_code=int(detail))
    if outcome == "timeout":
        return ExecResult(request_id, "timeout")
    message = detail if outcome == "error" else rest
    return ExecResult(request_id, "error", message=message[:EVENT_TEXT_MAX_CHARS])


# -- shell sessions --------------------------------------------------------------------------------

SHELL_MAX_SESSIONS = 8  # hvinit.c SHELL_MAX_SESSIONS
SHELL_CHUNK_BYTES = 4096  # raw bytes per sh-in / sh-out line
SHELL_WINDOW_BYTES = 64 * 1024  # unacked sh-out bytes per session
SHELL_DIMENSION_MAX = 1000
SHELL_ID_PATTERN = re.compile(r"[A-Za-z0-9-]{1,32}")
_SHELL_ID_BYTES = re.compile(rb"[A-Za-z0-9-]{1,32}")
_SHELL_TAG_PREFIX = b"sh-"
# The longest well-formed guest line: "sh-out", an id, the base64 of a full chunk.
SHELL_RECORD_MAX_BYTES = 16 + 32 + (SHELL_CHUNK_BYTES + 2) // 3 * 4


class ShellRequestInvalid(ValueError):
    """A shell request the guest would refuse: a bad id, size or command."""


def _shell_id(session_id: str) -> str:
    if not SHELL_ID_PATTERN.fullmatch(session_id):
        raise ShellRequestInvalid("a session id is 1-32 of A-Z a-z 0-9 -")
    return session_id


def _dimension(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= SHELL_DIMENSION_MAX:
        raise ShellRequestInvalid(f"rows and cols must be 1-{SHELL_DIMENSION_MAX}")
    return value


def shell_open(session_id: str, *, rows: int, cols: int, command: str | None = None, tty: bool = True) -> bytes:
    """``sh-open``: an interactive shell (tty, no command), a command on a terminal (tty), or a
    one-shot command whose output comes back byte for byte (``tty=False``)."""
    parts = ["sh-open", _shell_id(session_id), str(_dimension(rows)), str(_dimension(cols)), "tty" if tty else "run"]
    if command is not None:
        encoded = command.encode()
        if not encoded or b"\0" in encoded or len(encoded) > EXEC_MAX_COMMAND_BYTES:
            raise ShellRequestInvalid(f"a command must be 1-{EXEC_MAX_COMMAND_BYTES} bytes without NUL")
        parts.append(encoded.hex())
    elif not tty:
        raise ShellRequestInvalid("a one-shot command needs a command")
    return (" ".join(parts) + "\n").encode()


def shell_input(session_id: str, data: bytes) -> list[bytes]:
    """``sh-in`` lines for ``data``, SHELL_CHUNK_BYTES each."""
    prefix = f"sh-in {_shell_id(session_id)} ".encode()
    return [
        prefix + binascii.b2a_base64(data[start : start + SHELL_CHUNK_BYTES], newline=False) + b"\n"
        for start in range(0, len(data), SHELL_CHUNK_BYTES)
    ]


def shell_resize(session_id: str, *, rows: int, cols: int) -> bytes:
    return f"sh-resize {_shell_id(session_id)} {_dimension(rows)} {_dimension(cols)}\n".encode()


def shell_ack(session_id: str, nbytes: int) -> bytes:
    if not 0 < nbytes <= 4_000_000_000:
        raise ShellRequestInvalid("an ack is 1-4000000000 bytes")
    return f"sh-ack {_shell_id(session_id)} {nbytes}\n".encode()


def shell_close(session_id: str) -> bytes:
    return f"sh-close {_shell_id(session_id)}\n".encode()


@dataclass(frozen=True)
class ShellOpened:
    session_id: str


@dataclass(frozen=True)
class ShellOutput:
    session_id: str
    data: bytes


@dataclass(frozen=True)
class ShellExit:
    session_id: str
    exit_code: int


@dataclass(frozen=True)
class ShellError:
    session_id: str  # "-" when the guest could not read the id
    message: str


ShellMessage = ShellOpened | ShellOutput | ShellExit | ShellError


def is_shell_line(line: bytes) -> bool:
    return line.startswith(_SHELL_TAG_PREFIX)


def parse_shell_message(line: bytes) -> ShellMessage | MalformedRecord | None:
    """A guest ``sh-`` line (without its newline): the message, a MalformedRecord when it is not
    well-formed (a bad id, bad base64, an empty or oversized chunk, an exit code out of range),
    or None for a line that is not a shell message. Never raises."""
    line = line.rstrip(b"\r")
    if not is_shell_line(line):
        return None
    if len(line) > SHELL_RECORD_MAX_BYTES:
        return _malformed(line)
    tag, _, rest = line.partition(b" ")
    session, _, value = rest.partition(b" ")
    if not _SHELL_ID_BYTES.fullmatch(session):
        if tag == b"sh-error" and session == b"-":
            return ShellError("-", safe_text(value, max_chars=EVENT_TEXT_MAX_CHARS))
        return _malformed(line)
    session_id = session.decode("ascii")
    if tag == b"sh-opened" and not value:
        return ShellOpened(session_id)
    if tag == b"sh-out":
        try:
            data = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            return _malformed(line)
        if 0 < len(data) <= SHELL_CHUNK_BYTES:
            return ShellOutput(session_id, data)
    elif tag == b"sh-exit":
        if _EXIT_PATTERN.fullmatch(value) and int(value) <= EXIT_CODE_MAX:
            return ShellExit(session_id, int(value))
    elif tag == b"sh-error":
        return ShellError(session_id, safe_text(value, max_chars=EVENT_TEXT_MAX_CHARS))
    return _malformed(line)


class ControlLineReader:
    """Splits the control port's bytes into lines, bounded: a line longer than ``max_bytes``
    is dropped whole (counted in ``dropped``), so a guest that never sends a newline costs at
    most ``max_bytes`` of memory."""

    def __init__(self, *, max_bytes: int = RECORD_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._buffer = b""
        self._discarding = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False
            elif len(line) > self._max_bytes:
                self.dropped += 1
            else:
                lines.append(line)
        rest = buffer[start:]
        if self._discarding:
            rest = b""
        elif len(rest) > self._max_bytes:
            self.dropped += 1
            self._discarding = True
            rest = b""
        self._buffer = rest
        return lines
