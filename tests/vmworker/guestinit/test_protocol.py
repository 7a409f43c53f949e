"""The host-side parser of the guest protocol (log port lines)."""

import pytest

from vmworker.guestinit.protocol import (
    EVENT_TEXT_MAX_CHARS,
    EXEC_MAX_COMMAND_BYTES,
    MALFORMED_SAMPLE_BYTES,
    RECORD_MAX_BYTES,
    ExecRequestInvalid,
    ExecResult,
    GuestEvent,
    GuestLogParser,
    MalformedRecord,
    OutputLine,
    exec_request,
    guest_events,
    parse_exec_result,
    parse_guest_log,
)

A_RUN = (
    b"init 1204.500\n"
    b"started 1530.250\n"
    b"out hello\n"
    b"err oops: \xff bytes\n"
    b"out+ aaaa\n"
    b"err interleaved\n"
    b"out+ bbbb\n"
    b"out cc\n"
    b"out exit 0\n"
    b"stopping 2000.000\n"
    b"oom 1\n"
    b"exit 137\n"
)


def test_a_whole_run_is_summarized():
    summary = parse_guest_log(A_RUN)

    assert summary.output == (
        OutputLine("stdout", "hello"),
        OutputLine("stderr", "oops: \ufffd bytes"),
        OutputLine("stderr", "interleaved"),
        OutputLine("stdout", "aaaabbbbcc"),
        OutputLine("stdout", "exit 0"),
    )
    assert summary.init_ms == 1204.5
    assert summary.started_ms == 1530.25
    assert summary.init_to_exec_ms == 325.75
    assert summary.exit_code == 137
    assert summary.oom is True
    assert summary.errors == ()


def test_app_output_cannot_forge_events():
    summary = parse_guest_log(b"out exit 0\nerr error fake\nexit 3\n")

    assert summary.exit_code == 3
    assert summary.errors == ()
    assert [line.text for line in summary.output] == ["exit 0", "error fake"]


def test_feeding_byte_by_byte_gives_the_same_records():
    whole = GuestLogParser()
    expected = whole.feed(A_RUN) + whole.close()
    parser = GuestLogParser()
    records = []
    for index in range(len(A_RUN)):
        records += parser.feed(A_RUN[index : index + 1])
    records += parser.close()

    assert records == expected


def test_a_failed_start_reports_error_and_exit():
    summary = parse_guest_log(b"init 900.000\nerror exec: /app: no such file or directory\noom 0\nexit 127\n")

    assert summary.errors == ("exec: /app: no such file or directory",)
    assert summary.exit_code == 127
    assert summary.started_ms is None
    assert summary.init_to_exec_ms is None


def test_unfinished_log_has_no_exit_code_and_keeps_partial_data():
    parser = GuestLogParser()
    records = parser.feed(b"started 1.0\nout partial line without newl")

    assert records == [GuestEvent("started", "1.0")]
    assert parse_guest_log(b"started 1.0\n").exit_code is None
    assert parser.close() == [OutputLine("stdout", "partial line without newl")]


def test_a_line_the_app_never_ends_keeps_bounded_memory_and_ends_as_one_cut_line():
    parser = GuestLogParser(line_max_chars=10_000)
    piece = b"out+ " + b"p" * 4096 + b"\n"
    for _ in range(1000):  # 4 MiB of one line, as hvinit sends it
        assert parser.feed(piece) == []
    assert sum(len(text) for _, text, _ in parser.fragment_state()) == 10_000
    records = parser.feed(b"err other stream\nout end\n")
    assert records == [OutputLine("stderr", "other stream"), OutputLine("stdout", "p" * 10_000, cut=True)]
    assert parser.feed(b"out next\n") == [OutputLine("stdout", "next")]  # the next line is whole again
    assert not parser.in_fragmented_line


def test_a_parser_resumes_from_a_saved_fragment_state():
    whole = GuestLogParser(line_max_chars=12)
    head, tail = b"out+ abcdefgh\nerr+ xy\n", b"out+ ijklmnop\nout qr\nerr z\n"
    whole.feed(head)
    resumed = GuestLogParser.from_fragment_state(whole.fragment_state(), line_max_chars=12)
    assert (
        resumed.feed(tail)
        == whole.feed(tail)
        == [OutputLine("stdout", "abcdefghijkl", cut=True), OutputLine("stderr", "xyz")]
    )


def test_unknown_lines_are_kept_as_malformed():
    parser = GuestLogParser()

    assert parser.feed(b"bogus line\n\n") == [MalformedRecord(b"bogus line"), MalformedRecord(b"")]
    assert parser.feed(b"x" * 70000) == [MalformedRecord(b"x" * MALFORMED_SAMPLE_BYTES, 70000)]
    assert parser.pending_bytes == 0  # nothing of it is kept


def test_a_record_over_the_bound_is_dropped_whole_and_the_next_one_is_found():
    parser = GuestLogParser()
    line = b"out " + b"y" * RECORD_MAX_BYTES

    records = parser.feed(line[:5000]) + parser.feed(line[5000:] + b" exit 0\nexit 3\n")

    assert records == [MalformedRecord(line[:MALFORMED_SAMPLE_BYTES], len(line) + 7), GuestEvent("exit", "3")]
    assert parser.malformed_count == 1


@pytest.mark.parametrize(
    "line",
    [
        b"exit abc",
        b"exit -1",
        b"exit 256",
        b"exit 99999999999999999999999999",
        b"exit 1e3",
        b"exit 0x10",
        b"exit  3",
        b"exit 3\x00",
        b"exit \xff",
        b"oom 2",
        b"oom true",
        b"started nan",
        b"started inf",
        b"started -5.0",
        b"started 1e400",
        b"init 99999999999999.0",
        b"stopping ",
    ],
)
def test_an_event_with_a_bad_value_is_malformed_not_believed(line):
    summary = parse_guest_log(b"started 1.0\n" + line + b"\n")

    assert summary.exit_code is None and summary.oom is False and summary.started_ms == 1.0
    assert summary.malformed == 1
    assert list(guest_events(line + b"\n")) == [MalformedRecord(line)]


def test_well_formed_events_are_believed_at_their_bounds():
    summary = parse_guest_log(b"init 0\nstarted 999999999999.999999\noom 1\nexit 255\n")

    assert (summary.init_ms, summary.started_ms, summary.oom, summary.exit_code) == (
        0.0,
        999999999999.999999,
        True,
        255,
    )
    assert summary.malformed == 0


def test_error_text_from_the_guest_is_bounded_and_without_control_characters():
    summary = parse_guest_log(b"error bad\x00\x1b[2Jthing \xff " + b"e" * 5000 + b"\n")

    (error,) = summary.errors
    assert "\x00" not in error and "\x1b" not in error
    assert error.startswith("bad\ufffd\ufffd[2Jthing \ufffd ") and len(error) == EVENT_TEXT_MAX_CHARS


def test_a_malformed_exec_result_is_an_error_not_an_exit_code():
    assert parse_exec_result(b"exec-result r1 exit 300") == ExecResult("r1", "error", message="exit 300")
    assert parse_exec_result(b"exec-result r1 exit -1").outcome == "error"
    assert parse_exec_result(b"exec-result r1 exit 7") == ExecResult("r1", "exit", exit_code=7)


def test_guest_events_skips_output_and_keeps_events_in_order():
    assert list(guest_events(A_RUN)) == [
        GuestEvent("init", "1204.500"),
        GuestEvent("started", "1530.250"),
        GuestEvent("stopping", "2000.000"),
        GuestEvent("oom", "1"),
        GuestEvent("exit", "137"),
    ]


def test_an_exec_request_carries_the_command_hex_encoded_on_one_line():
    request = exec_request("abc-1", "test -f /tmp/ok && echo 'a\nb'", 2.5)

    tag, request_id, timeout_ms, command_hex = request.rstrip(b"\n").split(b" ")
    assert (tag, request_id, timeout_ms) == (b"exec", b"abc-1", b"2500")
    assert bytes.fromhex(command_hex.decode()).decode() == "test -f /tmp/ok && echo 'a\nb'"
    assert request.count(b"\n") == 1


@pytest.mark.parametrize("command", ["", "a\0b", "x" * (EXEC_MAX_COMMAND_BYTES + 1)])
def test_an_exec_request_the_guest_would_refuse_is_refused_on_the_host(command):
    with pytest.raises(ExecRequestInvalid):
        exec_request("id", command, 1)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"exec-result r1 exit 0", ExecResult("r1", "exit", exit_code=0)),
        (b"exec-result r1 exit 137\r", ExecResult("r1", "exit", exit_code=137)),
        (b"exec-result r2 timeout", ExecResult("r2", "timeout")),
        (
            b"exec-result r3 error cannot run /bin/sh in the image: no such file or directory",
            ExecResult("r3", "error", message="cannot run /bin/sh in the image: no such file or directory"),
        ),
        (b"exec-result r4 garbled", ExecResult("r4", "error", message="garbled")),
        (b"started 1530.250", None),
        (b"exit 0", None),
    ],
)
def test_exec_results_are_told_apart_from_mirrored_events(line, expected):
    assert parse_exec_result(line) == expected
