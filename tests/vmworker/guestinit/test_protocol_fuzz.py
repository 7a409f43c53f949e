"""Fuzzing the host's readers of guest bytes (hypothesis, bounded examples and deadline): the
guest-record parser, status()'s event scan and the console's line numbering never raise on any
bytes, keep bounded state, and still find the well-formed records among the garbage."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmworker.console import LINE_MAX_CHARS, GuestLogTail
from vmworker.guestinit.protocol import (
    EVENT_TEXT_MAX_CHARS,
    MALFORMED_SAMPLE_BYTES,
    RECORD_MAX_BYTES,
    GuestEvent,
    GuestLogParser,
    MalformedRecord,
    OutputLine,
    guest_events,
    parse_exec_result,
    parse_guest_log,
)

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

HOSTILE_PIECES = st.sampled_from(
    [
        b"exit ",
        b"exit -1",
        b"exit 99999999999999999999",
        b"oom ",
        b"started ",
        b"init nan",
        b"error ",
        b"out ",
        b"out+ ",
        b"err+ ",
        b"\x00",
        b"\xff\xfe",
        b"\r",
        b"\n",
        b"\x1b[2J",
        b"x" * (RECORD_MAX_BYTES + 1),
        b"9" * 400,
    ]
)
GARBAGE = st.lists(st.one_of(st.binary(max_size=64), HOSTILE_PIECES), max_size=40).map(b"".join)


def feed_in_pieces(parser: GuestLogParser, data: bytes, cuts: list[int]) -> list:
    records, start = [], 0
    for cut in sorted(cut % (len(data) + 1) for cut in cuts) + [len(data)]:
        records += parser.feed(data[start:cut])
        start = max(start, cut)
        assert parser.pending_bytes <= RECORD_MAX_BYTES  # bounded state, whatever was fed
    return records + parser.close()


@FUZZ
@given(data=GARBAGE, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_the_parser_never_raises_and_its_records_are_bounded(data, cuts):
    records = feed_in_pieces(GuestLogParser(), data, cuts)

    for record in records:
        if isinstance(record, MalformedRecord):
            assert len(record.raw) <= MALFORMED_SAMPLE_BYTES
        elif isinstance(record, OutputLine):
            assert len(record.text) <= RECORD_MAX_BYTES * 2
        else:
            assert isinstance(record, GuestEvent)
            if record.name == "exit":
                assert 0 <= record.code <= 255
            elif record.name == "oom":
                assert record.code in (0, 1)
            elif record.name == "error":
                assert len(record.value) <= EVENT_TEXT_MAX_CHARS and "\x00" not in record.value
            else:
                assert 0 <= record.monotonic_ms <= 10**12
    summary = parse_guest_log(data)
    assert summary.exit_code is None or 0 <= summary.exit_code <= 255
    for event in guest_events(data):
        assert isinstance(event, GuestEvent | MalformedRecord)
    parse_exec_result(data)


@FUZZ
@given(before=GARBAGE, after=GARBAGE, code=st.integers(min_value=0, max_value=255))
def test_well_formed_records_between_garbage_lines_are_still_found(before, after, code):
    good = b"started 12.5\nout the line\noom 1\nexit %d\n" % code
    data = before + b"\n" + good + after

    records = [r for r in feed_in_pieces(GuestLogParser(), data, []) if not isinstance(r, MalformedRecord)]
    # (an out+ piece in the garbage before it is the start of that line)
    assert any(r.text.endswith("the line") or r.cut for r in records if isinstance(r, OutputLine))
    assert GuestEvent("exit", str(code)) in records
    summary = parse_guest_log(before + b"\n" + good)
    assert (summary.exit_code, summary.oom, summary.started_ms) == (code, True, 12.5)
    assert [e for e in guest_events(before + b"\n" + good) if isinstance(e, GuestEvent)][-1] == GuestEvent(
        "exit", str(code)
    )


@FUZZ
@given(data=GARBAGE, reads=st.integers(min_value=1, max_value=5))
def test_the_console_numbers_lines_of_any_bytes_and_agrees_with_its_backlog(tmp_path_factory, data, reads):
    log = tmp_path_factory.mktemp("fuzz") / "guest.log"
    log.write_bytes(data + b"\nout \nerr \nout the end\n")  # the first two end any line in pieces
    tail = GuestLogTail(log, checkpoint_every_bytes=64)
    lines = []
    for _ in range(reads + 100):
        if not tail.has_unread():
            break
        lines += tail.read(max_bytes=max(1, len(data) // reads))

    assert [line.seq for line in lines] == list(range(len(lines)))
    assert lines[-1].text == "the end"
    assert all(len(line.text) <= LINE_MAX_CHARS + len(" [cut]") for line in lines)
    backlog = tail.backlog(-1, max_lines=10_000, max_bytes=10**9)
    assert [(line.seq, line.text) for line in backlog.lines] == [(line.seq, line.text) for line in lines]
