"""The console's view of a guest.log: output lines numbered by seq, read incrementally, and
bounded backlogs — on log bytes in the guest protocol's record format."""

from vmworker.console import LINE_MAX_CHARS, GuestLogTail

HEAD = b"init 120\nstarted 135\n"


def out(text: str) -> bytes:
    return b"out " + text.encode() + b"\n"


def numbered(count: int, start: int = 0) -> bytes:
    return b"".join(out(f"line {i}") for i in range(start, start + count))


def test_lines_are_numbered_across_streams_and_pieces(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(HEAD + b"out hello\nerr oops\nout+ AAA\nerr second\nout BBB\noom 0\nexit 3\n")
    tail = GuestLogTail(log)
    lines = tail.read()
    assert [(line.seq, line.stream, line.text) for line in lines] == [
        (0, "stdout", "hello"),
        (1, "stderr", "oops"),
        (2, "stderr", "second"),
        (3, "stdout", "AAABBB"),
    ]
    assert (tail.next_seq, tail.exit_code) == (4, 3)


def test_incremental_reads_give_each_line_once_including_a_line_split_across_writes(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(HEAD + b"out one\nout tw")
    tail = GuestLogTail(log)
    assert [line.text for line in tail.read()] == ["one"]
    assert tail.read() == []
    with open(log, "ab") as file:
        file.write(b"o\nerr three\n")
    assert [(line.seq, line.text) for line in tail.read()] == [(1, "two"), (2, "three")]
    assert tail.exit_code is None


def test_read_is_bounded_per_call(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(numbered(100))
    tail = GuestLogTail(log)
    first = tail.read(max_bytes=100)
    assert 0 < len(first) < 100 and tail.has_unread()
    rest = []
    for _ in range(100):
        rest += tail.read(max_bytes=100)
    assert [line.seq for line in first + rest] == list(range(100))
    assert not tail.has_unread()


def test_backlog_after_a_seq(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(HEAD + numbered(10))
    tail = GuestLogTail(log)
    tail.read()
    backlog = tail.backlog(6)
    assert [line.seq for line in backlog.lines] == [7, 8, 9]
    assert [line.text for line in backlog.lines] == ["line 7", "line 8", "line 9"]
    assert backlog.truncated_first_seq is None and backlog.next_seq == 10
    assert tail.backlog(9).lines == () and tail.backlog(-1).lines[0].seq == 0


def test_backlog_keeps_the_last_lines_and_says_where_it_starts(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(HEAD + numbered(2500))
    tail = GuestLogTail(log, checkpoint_every_bytes=1024)
    while tail.has_unread():
        tail.read(max_bytes=4096)
    backlog = tail.backlog(-1)
    assert [line.seq for line in backlog.lines] == list(range(1500, 2500))
    assert backlog.lines[0].text == "line 1500"
    assert backlog.truncated_first_seq == 1500
    resumed = tail.backlog(2400)
    assert [line.seq for line in resumed.lines] == list(range(2401, 2500)) and resumed.truncated_first_seq is None


def test_backlog_reads_a_bounded_number_of_bytes_of_a_long_log(tmp_path):
    log = tmp_path / "guest.log"
    long_line = "x" * 3000
    log.write_bytes(HEAD + b"".join(out(f"{i} {long_line}") for i in range(400)))  # ~1.2 MB
    tail = GuestLogTail(log, checkpoint_every_bytes=8192)
    while tail.has_unread():
        tail.read()
    backlog = tail.backlog(-1, max_bytes=64 * 1024)
    assert 15 <= len(backlog.lines) <= 25  # ~64 KiB of 3 KB lines, plus at most one checkpoint interval
    assert backlog.lines[-1].seq == 399 and backlog.lines[-1].text.startswith("399 ")
    assert [line.seq for line in backlog.lines] == list(range(backlog.lines[0].seq, 400))
    assert backlog.truncated_first_seq == backlog.lines[0].seq
    assert backlog.lines[0].text.startswith(f"{backlog.lines[0].seq} ")


def test_checkpoints_inside_lines_in_pieces_still_give_them_whole(tmp_path):
    log = tmp_path / "guest.log"
    piece = "p" * 4000
    records = b"".join(b"out+ " + piece.encode() + b"\n" for _ in range(5)) + b"out end\n"
    log.write_bytes(HEAD + (records + numbered(3)) * 40)
    tail = GuestLogTail(log, checkpoint_every_bytes=2048)
    while tail.has_unread():
        tail.read(max_bytes=3000)
    backlog = tail.backlog(-1, max_bytes=50_000)
    joined = piece * 5 + "end"
    assert all(line.text in (joined[:16384] + " [cut]", "line 0", "line 1", "line 2") for line in backlog.lines)
    assert [line.seq for line in backlog.lines] == list(range(backlog.lines[0].seq, 160))


def test_a_long_unfinished_line_gives_a_backlog_ending_with_it_cut(tmp_path):
    log = tmp_path / "guest.log"
    piece = b"out+ " + b"u" * 4096 + b"\n"
    log.write_bytes(HEAD + numbered(5) + piece * 400)  # a 1.6 MB line the app has not ended
    tail = GuestLogTail(log)
    while tail.has_unread():
        tail.read()
    before_end = tail.backlog(-1)  # lines 0-4 are more than BACKLOG_MAX_BYTES back; line 5 is not out yet
    assert (before_end.lines, before_end.truncated_first_seq, before_end.next_seq) == ((), 5, 5)
    with open(log, "ab") as file:
        file.write(piece * 10 + b"out !\nout after\n")
    while tail.has_unread():
        tail.read()
    backlog = tail.backlog(4)
    assert [line.seq for line in backlog.lines] == [5, 6]
    assert backlog.lines[0].text == "u" * LINE_MAX_CHARS + " [cut]" and backlog.lines[1].text == "after"
    assert tail.backlog(-1).lines == backlog.lines and tail.backlog(-1).truncated_first_seq == 5


def test_a_missing_log_gives_nothing(tmp_path):
    tail = GuestLogTail(tmp_path / "absent.log")
    assert tail.read() == [] and not tail.has_unread()
    assert tail.backlog(-1).lines == ()
