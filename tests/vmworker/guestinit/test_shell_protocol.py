"""The shell-session lines of the control port: requests the host builds, and the guest's
lines parsed as hostile (hypothesis: never raises, bounded, only well-formed lines believed)."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmworker.guestinit.protocol import (
    EVENT_TEXT_MAX_CHARS,
    MALFORMED_SAMPLE_BYTES,
    SHELL_CHUNK_BYTES,
    ControlLineReader,
    MalformedRecord,
    ShellError,
    ShellExit,
    ShellOpened,
    ShellOutput,
    ShellRequestInvalid,
    parse_shell_message,
    shell_ack,
    shell_input,
    shell_open,
    shell_resize,
)

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
PIECES = st.sampled_from(
    [
        b"sh-out ",
        b"sh-exit ",
        b"sh-opened ",
        b"sh-error ",
        b"s1 ",
        b"-",
        b"=",
        b"====",
        b"QUJD",
        b"\x00",
        b"\xff",
        b"\r",
        b"\n",
        b" ",
        b"999",
        b"x" * 6000,
        b"\x1b[2J",
    ]
)


def test_requests_are_one_line_each_and_refuse_what_the_guest_would():
    assert shell_open("a-1", rows=24, cols=80) == b"sh-open a-1 24 80 tty\n"
    assert shell_open("a", rows=1, cols=1000, tty=False, command="ls") == b"sh-open a 1 1000 run 6c73\n"
    assert shell_resize("a", rows=40, cols=132) == b"sh-resize a 40 132\n"
    assert shell_ack("a", 5) == b"sh-ack a 5\n"
    lines = shell_input("a", b"\x03" * (SHELL_CHUNK_BYTES + 1))
    assert [binascii.a2b_base64(line.split()[2]) for line in lines] == [b"\x03" * SHELL_CHUNK_BYTES, b"\x03"]
    for bad in (
        lambda: shell_open("a b", rows=24, cols=80),
        lambda: shell_open("x" * 33, rows=24, cols=80),
        lambda: shell_open("a", rows=0, cols=80),
        lambda: shell_open("a", rows=24, cols=1001),
        lambda: shell_open("a", rows=24, cols=80, tty=False),
        lambda: shell_open("a", rows=24, cols=80, command="a\0b"),
        lambda: shell_open("a", rows=24, cols=80, command="x" * 5000),
        lambda: shell_ack("a", 0),
        lambda: shell_input("a\n", b"x"),
    ):
        with pytest.raises(ShellRequestInvalid):
            bad()


def test_well_formed_guest_lines_are_believed_and_nothing_else():
    assert parse_shell_message(b"sh-opened s1") == ShellOpened("s1")
    assert parse_shell_message(b"sh-out s1 aGk=") == ShellOutput("s1", b"hi")
    assert parse_shell_message(b"sh-exit s1 130\r") == ShellExit("s1", 130)
    assert parse_shell_message(b"sh-error - malformed sh-open") == ShellError("-", "malformed sh-open")
    assert parse_shell_message(b"sh-error s1 no \x1b[2J\x00") == ShellError("s1", "no \ufffd[2J\ufffd")
    assert parse_shell_message(b"exec-result x exit 0") is None
    assert parse_shell_message(b"stopping 12.5") is None
    for bad in (
        b"sh-exit s1 256",
        b"sh-exit s1 -1",
        b"sh-out s1 !!!!",
        b"sh-out s1 ",
        b"sh-out s1 aGk",
        b"sh-out bad/id aGk=",
        b"sh-opened s1 extra",
        b"sh-what s1",
        b"sh-out s1 " + binascii.b2a_base64(b"x" * (SHELL_CHUNK_BYTES + 1), newline=False),
    ):
        assert isinstance(parse_shell_message(bad), MalformedRecord), bad


@FUZZ
@given(st.lists(st.one_of(PIECES, st.binary(max_size=64)), max_size=40))
def test_no_guest_line_makes_the_parser_raise_or_keep_much(pieces):
    line = b"".join(pieces)
    message = parse_shell_message(line)
    if isinstance(message, MalformedRecord):
        assert len(message.raw) <= MALFORMED_SAMPLE_BYTES
    elif isinstance(message, ShellError):
        assert len(message.message) <= EVENT_TEXT_MAX_CHARS
    elif isinstance(message, ShellOutput):
        assert 0 < len(message.data) <= SHELL_CHUNK_BYTES
    elif isinstance(message, ShellExit):
        assert 0 <= message.exit_code <= 255


@FUZZ
@given(st.lists(st.one_of(PIECES, st.binary(max_size=512)), max_size=60), st.integers(1, 97))
def test_the_line_reader_is_bounded_whatever_the_chunking(pieces, chunk):
    data = b"".join(pieces)
    reader = ControlLineReader(max_bytes=1000)
    lines = []
    for start in range(0, len(data), chunk):
        lines += reader.feed(data[start : start + chunk])
        assert len(reader._buffer) <= 1000
    assert all(len(line) <= 1000 and b"\n" not in line for line in lines)
    whole = [line for line in data.split(b"\n")[:-1] if len(line) <= 1000]
    assert len(lines) <= len(whole)
