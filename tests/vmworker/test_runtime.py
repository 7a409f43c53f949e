from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import pytest

from tests.support.oci_images import PRINTER_STDOUT_LINES, SIGTERM_GOT_LINE, SIGTERM_READY_LINE
from vmworker.cli import credentials_from_authfile, parse_publish
from vmworker.driver.fake import FakeHost
from vmworker.driver.spec import DomainSpec, InterfaceSpec, PortForward
from vmworker.guestinit.protocol import OutputLine
from vmworker.images.manifest import ImageConfig
from vmworker.network.tenant import TenantNetwork, instance_mac
from vmworker.runtime import (
    LOG_READ_CHUNK_BYTES,
    LOG_TAIL_CHECK_BYTES,
    BootFailed,
    ExecCheckFailed,
    HostPortBusy,
    HyperVMRuntime,
    InstanceSpec,
    InvalidSpec,
    NothingToRun,
    RuntimeSettings,
    merge_env,
    resolve_argv,
)

IMAGE = ImageConfig(
    entrypoint=("/entry",),
    cmd=("serve", "--port=80"),
    env=("A=1", "PATH=/bin"),
    working_dir="/srv",
    user="app",
    exposed_ports=("80/tcp",),
)


@pytest.mark.parametrize(
    "entrypoint,command,shell,expected",
    [
        (None, None, None, ("/entry", "serve", "--port=80")),
        (None, ("other",), None, ("/entry", "other")),
        (("/bin/echo",), None, None, ("/bin/echo",)),  # an Entrypoint override drops the image Cmd
        (("/bin/echo",), ("x",), None, ("/bin/echo", "x")),
        (None, None, "echo $HOME && sleep 1", ("/bin/sh", "-c", "echo $HOME && sleep 1")),
    ],
)
def test_resolve_argv_follows_docker_and_marathon(entrypoint, command, shell, expected):
    assert resolve_argv(IMAGE, entrypoint=entrypoint, command=command, shell_command=shell) == expected


def test_an_image_with_nothing_to_run_is_refused():
    empty = ImageConfig(entrypoint=(), cmd=(), env=(), working_dir="", user="", exposed_ports=())
    with pytest.raises(NothingToRun):
        resolve_argv(empty, entrypoint=None, command=None, shell_command=None)


def test_env_overrides_replace_image_values_by_name():
    assert merge_env(("A=1", "B=2=3"), {"A": "x", "C": ""}) == ("A=x", "B=2=3", "C=")


def test_publish_and_authfile_parsing(tmp_path):
    assert parse_publish("8080:80", "127.0.0.1") == PortForward("127.0.0.1", 8080, 80)
    assert parse_publish("127.0.0.2:81:8000", "127.0.0.1") == PortForward("127.0.0.2", 81, 8000)
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {"127.0.0.1:5000": {"auth": "dTpwOnc="}}}')  # u:p:w
    credentials = credentials_from_authfile(authfile, "127.0.0.1:5000/a/b:c")
    assert (credentials.username, credentials.password) == ("u", "p:w")
    assert credentials_from_authfile(authfile, "docker.io/library/x") is None


def spec_for(image, registry_authfile, **overrides) -> InstanceSpec:
    return InstanceSpec(
        image=image.reference,
        credentials=credentials_from_authfile(registry_authfile, image.reference),
        tls_verify=False,
        **overrides,
    )


def domains_named(name: str) -> list[str]:
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.split() if line == name]


@pytest.mark.vm
def test_boot_reports_phase_timings_and_a_second_boot_finds_the_same_domain(
    runtime, runtime_state_dir, test_images, registry_authfile
):
    spec = spec_for(test_images["sigterm"], registry_authfile, name="twice")
    phases = []
    first = runtime.boot(spec, on_phase=phases.append)
    assert phases == ["pulling", "preparing", "booting"]
    assert not first.reused and first.virt_type in ("qemu", "kvm")
    for phase in ("initramfs", "define", "boot_to_init", "init_to_exec", "boot_to_exec"):
        assert first.timings_s[phase] > 0, phase
    assert "pull" in first.timings_s or "cache" in first.timings_s

    again = runtime.boot(spec)  # a re-delivered task
    assert again.reused and again.domain_name == first.domain_name
    assert domains_named(first.domain_name) == [first.domain_name]

    # A runtime made afresh (a restarted worker) reads the same instance from its files.
    restarted = HyperVMRuntime(RuntimeSettings(state_dir=runtime_state_dir))
    assert restarted.status(spec.instance_id).state == "running"
    deadline = time.monotonic() + 20
    while OutputLine("stdout", SIGTERM_READY_LINE) not in restarted.records(spec.instance_id):
        assert time.monotonic() < deadline, "the app's first line never reached the log"
        time.sleep(0.1)
    assert restarted.stop(spec.instance_id, timeout_s=10).exit_code == 0
    assert domains_named(first.domain_name) == []


@pytest.mark.vm
def test_follow_streams_output_until_exit(runtime, test_images, registry_authfile):
    spec = spec_for(test_images["printer"], registry_authfile)
    runtime.boot(spec)
    lines = [record.text for record in runtime.follow(spec.instance_id) if isinstance(record, OutputLine)]
    assert [line for line in lines if line in PRINTER_STDOUT_LINES] == list(PRINTER_STDOUT_LINES)
    assert runtime.status(spec.instance_id).exit_code == 3


@pytest.mark.vm
def test_a_missing_program_is_a_boot_failure_with_the_reason_and_no_domain(runtime, test_images, registry_authfile):
    spec = spec_for(test_images["printer"], registry_authfile, entrypoint=("/no/such/program",))
    with pytest.raises(BootFailed) as excinfo:
        runtime.boot(spec)
    assert excinfo.value.exit_code == 127
    assert "/no/such/program" in str(excinfo.value)
    assert domains_named(f"hvm-{spec.instance_id}") == []


def test_a_host_port_held_by_another_program_is_refused_and_nothing_is_left(
    runtime, runtime_state_dir, test_images, registry_authfile
):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        spec = spec_for(test_images["httpd"], registry_authfile, ports=(PortForward("127.0.0.1", taken, 8080),))
        with pytest.raises(HostPortBusy, match=f"127.0.0.1:{taken} is in use") as excinfo:
            runtime.boot(spec)
    assert [port.host_port for port in excinfo.value.ports] == [taken]
    assert domains_named(f"hvm-{spec.instance_id}") == []
    assert not (runtime_state_dir / "instances" / spec.instance_id).exists()


def test_too_little_memory_is_refused_before_anything_is_made(runtime, runtime_state_dir):
    with pytest.raises(InvalidSpec):
        runtime.boot(InstanceSpec(image="127.0.0.1:1/x:y", memory_mib=32))
    assert not any(path.name.startswith("x") for path in (runtime_state_dir / "instances").iterdir())


@pytest.mark.vm
def test_exec_check_runs_commands_inside_the_instance(runtime, test_images, registry_authfile):
    spec = spec_for(test_images["sigterm"], registry_authfile, env={"CHECK_TOKEN": "ok"})
    runtime.boot(spec)

    assert runtime.exec_check(spec.instance_id, 'test "$CHECK_TOKEN" = ok', timeout_s=10) == 0
    assert runtime.exec_check(spec.instance_id, "test -e /no/such/file", timeout_s=10) == 1
    with pytest.raises(ExecCheckFailed, match="did not finish within 1 s"):
        runtime.exec_check(spec.instance_id, "sleep 30", timeout_s=1)
    assert runtime.exec_check(spec.instance_id, "exit 7", timeout_s=10) == 7  # the channel still serves

    runtime.stop(spec.instance_id, timeout_s=10)
    with pytest.raises(ExecCheckFailed, match="not running"):
        runtime.exec_check(spec.instance_id, "true", timeout_s=10)


@pytest.mark.vm
def test_a_stop_during_a_long_command_check_stops_the_app_with_sigterm(runtime, test_images, registry_authfile):
    """QEMU serves the control socket to one client at a time: the check gives it up to the stop."""
    spec = spec_for(test_images["sigterm"], registry_authfile)
    runtime.boot(spec)
    outcome: list[BaseException] = []

    def long_check():
        try:
            runtime.exec_check(spec.instance_id, "sleep 120", timeout_s=120)
        except ExecCheckFailed as exc:
            outcome.append(exc)

    checker = threading.Thread(target=long_check)
    checker.start()
    time.sleep(2)  # the check holds the control channel now (nothing to wait on: it only sleeps)
    assert checker.is_alive()

    stopped = runtime.stop(spec.instance_id, timeout_s=10)
    checker.join(timeout=30)

    lines = [r.text for r in runtime.records(spec.instance_id) if isinstance(r, OutputLine)]
    assert (stopped.state, stopped.exit_code, SIGTERM_GOT_LINE in lines) == ("exited", 0, True)  # not destroyed
    assert [str(exc) for exc in outcome] == ["the instance is stopping"]


def make_instance_files(runtime: HyperVMRuntime) -> tuple[str, object]:
    instance_id = str(uuid.uuid4())
    directory = runtime.instance_dir(instance_id)
    directory.mkdir(parents=True)
    info = {"instance_id": instance_id, "name": "big", "image": "x", "ports": [], "created_at": 1.0}
    (directory / "instance.json").write_text(json.dumps(info))
    return instance_id, directory / "guest.log"


def test_status_reads_only_what_the_guest_log_gained(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    output_line = b"out " + b"x" * 300 + b"\n"
    log.write_bytes(b"init 1.0\nstarted 2.0\n" + output_line * 60_000)  # about 18 MB of app output

    first = runtime.status(instance_id)
    assert (first.exit_code, first.errors) == (None, ())
    read_once = runtime.log_bytes_read
    # Each 1 MiB chunk's unfinished last line is read again with the next chunk.
    assert log.stat().st_size <= read_once < log.stat().st_size * 1.01

    # Nothing new: nothing read but the last bytes it read before (to know it is the same file).
    # The start of the file is never looked at again.
    with open(log, "r+b") as rewrite:
        rewrite.write(b"exit 9\n")
    assert runtime.status(instance_id).exit_code is None
    assert runtime.log_bytes_read - read_once <= LOG_TAIL_CHECK_BYTES

    with open(log, "ab") as guest:
        guest.write(b"error boom\noom 1\nexi")  # the guest is mid-way through a line
        guest.flush()
        partial = runtime.status(instance_id)
        assert (partial.errors, partial.oom, partial.exit_code) == (("boom",), True, None)
        guest.write(b"t 3\n")
    finished = runtime.status(instance_id)
    assert (finished.state, finished.exit_code) == ("exited", 3)
    assert runtime.log_bytes_read - read_once < 4 * LOG_TAIL_CHECK_BYTES + 100

    # The instance made again (a new log, longer than what was read): read from its start.
    replacement = log.with_name("guest.log.new")
    replacement.write_bytes(b"started 1.0\n" + output_line * 70_000 + b"exit 4\n")
    replacement.replace(log)
    assert runtime.status(instance_id).exit_code == 4

    # A restarted worker (a new runtime) reads the whole log once and agrees.
    fresh = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    assert fresh.status(instance_id).exit_code == 4


def test_status_remembers_a_bounded_number_of_instances(tmp_path, monkeypatch):
    monkeypatch.setattr("vmworker.runtime.STATUS_CACHE_INSTANCES", 2)
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    logs = []
    content = b"started 1.0\nout " + b"z" * 500 + b"\n"
    for _ in range(3):
        instance_id, log = make_instance_files(runtime)
        log.write_bytes(content)
        logs.append(instance_id)
        runtime.status(instance_id)
    read = runtime.log_bytes_read
    runtime.status(logs[2])  # remembered: only the tail check
    assert runtime.log_bytes_read == read + LOG_TAIL_CHECK_BYTES
    runtime.status(logs[0])  # forgotten (the oldest): read again from the start
    assert runtime.log_bytes_read == read + LOG_TAIL_CHECK_BYTES + len(content)


def ended_instances(runtime: HyperVMRuntime, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        instance_id, log = make_instance_files(runtime)
        log.write_bytes(b"started 1.0\nout hello\nexit 0\n")
        ids.append(instance_id)
    return ids


def test_ended_instances_are_recorded_once_then_cost_no_log_read_nor_libvirt_lookup(tmp_path, monkeypatch):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    ids = ended_instances(runtime, 1500)
    assert {s.state for s in runtime.list_instances()} == {"exited"}  # each log read once, its end recorded
    lookups = []
    real_lookup = runtime.host.lookup
    monkeypatch.setattr(
        runtime.host, "lookup", lambda instance_id: lookups.append(instance_id) or real_lookup(instance_id)
    )
    read = runtime.log_bytes_read

    statuses = runtime.list_instances()

    assert (len(statuses), {(s.state, s.exit_code) for s in statuses}) == (1500, {("exited", 0)})
    assert (runtime.log_bytes_read - read, lookups, runtime.live_instance_ids()) == (0, [], set())
    fresh = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())  # a restarted worker
    assert (fresh.status(ids[0]).state, fresh.log_bytes_read) == ("exited", 0)


def test_folders_of_instances_ended_before_the_retention_are_deleted_and_live_or_kept_ones_stay(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    old, recent = ended_instances(runtime, 300), ended_instances(runtime, 20)
    for instance_id in old + recent:
        runtime.release(instance_id)
    hour_ago = time.time() - 3700
    for instance_id in old:
        record = runtime.instance_dir(instance_id) / "ended.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "ended_at": hour_ago}))
    vanished, _ = make_instance_files(runtime)  # never released (the worker died): its files' age counts
    os.utime(runtime.instance_dir(vanished) / "instance.json", (hour_ago, hour_ago))
    kept, _ = make_instance_files(runtime)  # the database still calls it live (e.g. booting)
    os.utime(runtime.instance_dir(kept) / "instance.json", (hour_ago, hour_ago))
    stray = runtime.instances_dir / "not-an-instance"
    stray.mkdir()

    pruned = runtime.prune_ended(retention_s=3600, keep={kept})

    assert sorted(pruned) == sorted([*old, vanished])
    left = {path.name for path in runtime.instances_dir.iterdir()}
    assert left == {*recent, kept, stray.name}
    assert runtime.prune_ended(retention_s=3600, keep={kept}) == []


def test_the_network_sweep_removes_only_unwanted_unused_networks_this_runtime_made(tmp_path):
    host = FakeHost()
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=host)
    wanted, unused, busy, others = (TenantNetwork.for_network_id(str(uuid.uuid4())) for _ in range(4))
    for network in (wanted, unused, busy):
        runtime.network_ensure(network)
    host.network_ensure(others)  # another runtime (another portal) on this libvirtd made it
    instance_id = str(uuid.uuid4())
    nic = InterfaceSpec(network=busy.libvirt_name, mac=instance_mac(instance_id, "tenant"))
    host.define_and_start(fake_domain(tmp_path, instance_id, interfaces=(nic,)))

    removed = runtime.network_sweep(wanted_network_ids={wanted.network_id})

    assert removed == [unused.libvirt_name]
    assert host.list_networks() == sorted([wanted.libvirt_name, busy.libvirt_name, others.libvirt_name])
    host.lookup(instance_id).destroy()
    assert runtime.network_sweep(wanted_network_ids={wanted.network_id}) == [busy.libvirt_name]


def fake_domain(tmp_path, instance_id: str, **overrides) -> DomainSpec:
    for name in ("vmlinuz", "initrd"):
        (tmp_path / name).touch()
    return DomainSpec(
        instance_id=instance_id,
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        cmdline="quiet",
        vcpus=1,
        memory_mib=128,
        console_log=tmp_path / "console.log",
        virt_type="qemu",
        metadata={"tenant": "t"},
        **overrides,
    )


HOSTILE_RECORDS = [
    b"exit abc\n",
    b"exit 99999999999999999999999\n",
    b"exit -1\n",
    b"oom 7\n",
    b"started not-a-time\n",
    b"error \x00nul and \x1b[31mescape\n",
    b"\xff\xfe\x00garbage without a tag\n",
    b"out " + b"m" * (4 * 1024 * 1024) + b"\n",  # a 4 MiB record
    b"x" * LOG_READ_CHUNK_BYTES + b"exit 0\n",  # a record forged to start just after a read chunk
]


@pytest.mark.parametrize("hostile", HOSTILE_RECORDS, ids=range(len(HOSTILE_RECORDS)))
def test_status_never_raises_on_hostile_records_and_believes_only_well_formed_ones(tmp_path, hostile):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    log.write_bytes(b"init 1.0\nstarted 2.0\n" + hostile)

    status = runtime.status(instance_id)

    assert (status.state, status.exit_code, status.oom) == ("lost", None, False)  # the fake has no domain
    assert all("\x00" not in error and "\x1b" not in error for error in status.errors)
    with open(log, "ab") as guest:
        guest.write(b"oom 1\nexit 137\n")
    assert (runtime.status(instance_id).exit_code, runtime.status(instance_id).oom) == (137, True)


def test_a_malformed_end_record_is_not_believed(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    log.write_bytes(b"started 1.0\nexit 3\n")
    assert runtime.status(instance_id).exit_code == 3  # recorded in ended.json
    ended = runtime.instance_dir(instance_id) / "ended.json"
    for bad in (b"{", b"[]", json.dumps({"state": "exited", "exit_code": "9", "oom": 0, "errors": [1]}).encode()):
        ended.write_bytes(bad)
        assert fresh_status(tmp_path, instance_id).exit_code == 3  # read again from the log


def fresh_status(tmp_path, instance_id):
    return HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost()).status(instance_id)


def test_the_console_tail_holds_no_nul_nor_escape_for_the_database(tmp_path):
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=tmp_path / "state"), host=FakeHost())
    instance_id, log = make_instance_files(runtime)
    (log.parent / "console.log").write_bytes(b"boot\x00\x1b]52;c;AAAA\x07 \xff\nok\n")

    assert runtime.console_tail(instance_id) == "boot\ufffd\ufffd]52;c;AAAA\ufffd \ufffd\nok\n"
