"""A guest log across virtlogd's rotation (vmworker.log_files): the console numbers its lines on
across files and worker restarts, backlogs answer what is kept, status() follows the files."""

import os

from tests.vmworker.test_runtime import make_instance_files
from vmworker.console import GuestLogTail
from vmworker.driver.fake import FakeHost
from vmworker.log_files import SEQ_INDEX_FILE, log_caps, log_files
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

MAX_SIZE = 64 * 1024
MAX_BACKUPS = 3


class Virtlogd:
    """Writes a log the way virtlogd does: appends, and past MAX_SIZE renames guest.log to .0
    (.0 to .1 ...), deletes the one past MAX_BACKUPS, starts a new guest.log; it cuts a write
    at the size limit, so a record may begin in one file and end in the next."""

    def __init__(self, path):
        self.path = path

    def write(self, data: bytes) -> None:
        while data:
            size = self.path.stat().st_size if self.path.exists() else 0
            room = MAX_SIZE - size
            if room <= 0:
                self.rotate()
                continue
            with open(self.path, "ab") as log:
                log.write(data[:room])
            data = data[room:]

    def rotate(self) -> None:
        (self.path.with_name(f"guest.log.{MAX_BACKUPS - 1}")).unlink(missing_ok=True)
        for number in reversed(range(MAX_BACKUPS - 1)):
            older = self.path.with_name(f"guest.log.{number}")
            if older.exists():
                older.rename(self.path.with_name(f"guest.log.{number + 1}"))
        self.path.rename(self.path.with_name("guest.log.0"))
        self.path.touch()


def lines(start: int, count: int) -> bytes:
    return b"".join(b"out line %d %s\n" % (n, b"p" * 90) for n in range(start, start + count))


def test_seqs_run_on_across_rotations_and_a_restarted_tail_numbers_the_kept_files_the_same(tmp_path):
    log = tmp_path / "guest.log"
    log.touch()
    writer = Virtlogd(log)
    writer.write(b"init 1\nstarted 2\nerror early\n")
    tail = GuestLogTail(log, checkpoint_every_bytes=8 * 1024)
    seen = []
    for batch in range(40):  # 40 x 100 lines x ~105 bytes: 420 KB, 6 rotations and more
        writer.write(lines(batch * 100, 100))
        seen += tail.read()
    assert [(line.seq, line.text.split()[1]) for line in seen] == [(n, str(n)) for n in range(4000)]
    assert len(log_files(log)) == 1 + MAX_BACKUPS  # what virtlogd keeps: the cap

    backlog = tail.backlog(-1, max_lines=10_000, max_bytes=10**9)
    first = backlog.truncated_first_seq
    assert first is not None and first > 1000  # the oldest lines were rotated out, and it says so
    assert [line.seq for line in backlog.lines] == list(range(first, 4000))
    assert [line.text.split()[1] for line in backlog.lines] == [str(n) for n in range(first, 4000)]

    restarted = GuestLogTail(log)  # a worker restart: the saved file starts number the kept files
    again = restarted.read(max_bytes=10**9)
    assert [(line.seq, line.text) for line in again] == [(line.seq, line.text) for line in backlog.lines]
    writer.write(b"out after\noom 1\nexit 7\n")
    assert [(line.seq, line.text) for line in restarted.read()] == [(4000, "after")]
    assert restarted.exit_code == 7


def test_status_follows_the_rotated_files_and_a_fresh_runtime_knows_what_rotated_out(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    log.touch()
    writer = Virtlogd(log)
    writer.write(b"init 1\nstarted 2\nerror early\n")
    tail = GuestLogTail(log)  # the console agent, which saves each file's start
    for batch in range(40):
        writer.write(lines(batch * 100, 100))
        tail.read()
        assert runtime.status(instance_id).state == "lost"  # started (the fake has no domain): not "booting"
    assert not any(b"started" in path.read_bytes() for _, path in log_files(log))  # rotated out
    fresh = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    assert (fresh.status(instance_id).state, fresh.status(instance_id).errors) == ("lost", ("early",))
    writer.write(b"oom 1\nexit 0\n")
    assert (runtime.status(instance_id).exit_code, runtime.status(instance_id).oom) == (0, True)
    assert (log.parent / SEQ_INDEX_FILE).exists()


def test_a_tail_that_fell_behind_a_rotated_out_file_numbers_on_from_the_oldest_kept(tmp_path):
    log = tmp_path / "guest.log"
    log.touch()
    writer = Virtlogd(log)
    tail = GuestLogTail(log)
    writer.write(lines(0, 10))
    assert len(tail.read()) == 10
    writer.write(lines(10, 4000))  # more than virtlogd keeps, before the tail reads again
    later = tail.read(max_bytes=10**9)
    assert [line.seq for line in later] == list(range(10, 10 + len(later)))
    assert later[-1].text.startswith("line 4009 ")


def test_log_caps_reads_virtlogd_and_qemu_conf(tmp_path):
    virtlogd, qemu = tmp_path / "virtlogd.conf", tmp_path / "qemu.conf"
    virtlogd.write_text("#max_size = 1\nmax_size = 16777216\nmax_backups = 5\n")
    qemu.write_text('#stdio_handler = "file"\n')
    assert log_caps(virtlogd_conf=virtlogd, qemu_conf=qemu) == {
        "through_virtlogd": True,
        "max_size_bytes": 16777216,
        "max_backups": 5,
    }
    qemu.write_text('stdio_handler = "file"\n')
    assert log_caps(virtlogd_conf=tmp_path / "none", qemu_conf=qemu)["through_virtlogd"] is False
    assert os.path.exists(virtlogd)


def test_saved_log_starts_are_private_whatever_the_umask(tmp_path):
    """They hold fragments of the app's output: 0600 even under the worker's umask 022."""
    import os
    import stat

    from vmworker.log_files import SEQ_INDEX_FILE, file_starts_save

    old = os.umask(0o022)
    try:
        file_starts_save(tmp_path, [])
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / SEQ_INDEX_FILE).stat().st_mode) == 0o600
