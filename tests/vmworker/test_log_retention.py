"""Per-instance log caps (vmworker.log_retention): the host frees the start of a guest's logs
past their cap, and seqs, backlogs and status() stay what they were."""

import os

from vmworker.console import GuestLogTail
from vmworker.driver.fake import FakeHost
from vmworker.log_retention import TRIM_FILE, allocated_bytes, trim_unnumbered_log
from vmworker.runtime import HyperVMRuntime, RuntimeSettings
from tests.vmworker.test_runtime import make_instance_files

MAX_BYTES = 256 * 1024
LINE = b"out " + b"p" * 95 + b"\n"  # 100 bytes


def flood(log, lines: int) -> None:
    with open(log, "ab") as guest:  # as QEMU writes it: O_APPEND
        guest.write(LINE * lines)


def test_a_tail_keeps_the_guest_log_within_its_cap_and_seqs_survive_a_restart(tmp_path):
    log = tmp_path / "guest.log"
    log.write_bytes(b"init 1\nstarted 2\nerror early\n")
    tail = GuestLogTail(log, max_bytes=MAX_BYTES, checkpoint_every_bytes=16 * 1024)
    seen = 0
    for _ in range(40):  # 40 x 50 KiB written, 2 MB: 8 times the cap
        flood(log, 500)
        seen += len(tail.read_and_trim())
        assert allocated_bytes(log) <= MAX_BYTES + 64 * 1024
    assert seen == tail.next_seq == 20_000
    assert os.stat(log).st_size > 2_000_000  # every offset is where it was

    backlog = tail.backlog(-1, max_lines=100_000, max_bytes=10**9)
    assert backlog.truncated_first_seq is not None and backlog.truncated_first_seq > 10_000
    assert [line.seq for line in backlog.lines] == list(range(backlog.truncated_first_seq, 20_000))

    # A restarted worker: its tail starts at the trim point with the seq it had there.
    with open(log, "ab") as guest:
        guest.write(b"out after the restart\noom 1\nexit 7\n")
    restarted = GuestLogTail(log, max_bytes=MAX_BYTES)
    lines = restarted.read()
    assert (lines[-1].seq, lines[-1].text, restarted.exit_code) == (20_000, "after the restart", 7)
    assert lines[0].seq == restarted.backlog(-1, max_lines=100_000, max_bytes=10**9).lines[0].seq > 0

    # status() from the trim point on knows what the freed part said.
    state = tmp_path / "state"
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=state), host=FakeHost())
    instance_id, instance_log = make_instance_files(runtime)
    os.replace(log, instance_log)
    os.replace(tmp_path / TRIM_FILE, instance_log.parent / TRIM_FILE)
    status = runtime.status(instance_id)
    assert (status.state, status.exit_code, status.oom, status.errors) == ("exited", 7, True, ("early",))
    assert runtime.log_bytes_read < MAX_BYTES * 2  # it did not read the freed zeros


def test_the_running_status_reader_follows_a_trim(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    log.write_bytes(b"started 2\n")
    tail = GuestLogTail(log, max_bytes=MAX_BYTES, checkpoint_every_bytes=16 * 1024)
    for _ in range(20):
        flood(log, 500)
        tail.read_and_trim()
        assert runtime.status(instance_id).state == "lost"  # started, domain gone (the fake): not "booting"
    flood(log, 1)
    with open(log, "ab") as guest:
        guest.write(b"exit 0\n")
    tail.read_and_trim()
    assert runtime.status(instance_id).exit_code == 0


def test_the_console_log_is_cut_to_its_newest_half_past_the_cap(tmp_path):
    console = tmp_path / "console.log"
    console.write_bytes(b"c" * (3 * MAX_BYTES) + b"the last line\n")

    assert trim_unnumbered_log(console, MAX_BYTES) is True
    assert allocated_bytes(console) <= MAX_BYTES // 2 + 8192
    with open(console, "rb") as log:
        log.seek(-14, os.SEEK_END)
        assert log.read() == b"the last line\n"
    assert trim_unnumbered_log(console, MAX_BYTES) is False
