"""The guest init booted for real (QEMU TCG + Debian cloud kernel): every PID-1 duty."""

import dataclasses
import hashlib
import random
import socket
import time

import pytest

from tests.support.guest_qemu import ROOTFS_SERIAL
from vmworker.guestinit import STOP_COMMAND, GuestConfig, GuestNetwork
from vmworker.guestinit.protocol import GuestEvent, GuestLogParser, OutputLine

pytestmark = pytest.mark.vm

BASE = GuestConfig(
    hostname="hvm-test",
    argv=("/bin/sh", "-c", "true"),
    env=("PATH=/bin",),
    working_dir="",
    user="",
    rootfs_serial=ROOTFS_SERIAL,
    rootfs_type="erofs",
    overlay_size_mib=16,
    stop_grace_s=5,
)


def shell(script: str, **changes) -> GuestConfig:
    return dataclasses.replace(BASE, argv=("/bin/sh", "-c", script), **changes)


def events(log: bytes) -> list[GuestEvent]:
    parser = GuestLogParser()
    return [r for r in parser.feed(log) + parser.close() if isinstance(r, GuestEvent)]


def test_output_is_tagged_and_exit_code_reported(boot_guest, erofs_rootfs):
    script = "echo hello; echo oops >&2; head -c 10000 /dev/zero | tr '\\0' a; echo; exit 3"

    result = boot_guest(shell(script), rootfs=erofs_rootfs)

    assert result.summary.output[:2] == (
        OutputLine("stdout", "hello"),
        OutputLine("stderr", "oops"),
    )
    assert result.stdout_lines[1] == "a" * 10000  # sent as 4 KiB fragments, joined again
    assert result.summary.exit_code == 3
    assert result.summary.oom is False
    assert result.summary.errors == ()
    assert 0 < result.summary.init_ms < result.summary.started_ms
    assert [e.name for e in events(result.log)] == ["init", "started", "oom", "exit"]
    result.assert_powered_off_cleanly()


@pytest.mark.parametrize(
    ("user", "expected_id", "expected_home"),
    [
        ("app", "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)", "/home/app"),
        ("4321:extra", "uid=4321 gid=2000(extra) groups=2000(extra)", "/"),
    ],
)
def test_identity_env_workdir_and_hostname_are_applied(boot_guest, erofs_rootfs, user, expected_id, expected_home):
    config = shell(
        'id; pwd; hostname; echo "greeting=$GREETING"; echo "home=$HOME"; echo "path=$PATH"',
        user=user,
        working_dir="/srv/data",
        env=("PATH=/bin", "GREETING=hi there; $(not run)"),
        hostname="web-7",
    )

    result = boot_guest(config, rootfs=erofs_rootfs)

    assert result.stdout_lines == [
        expected_id,
        "/srv/data",  # created by the init, as docker does
        "web-7",
        "greeting=hi there; $(not run)",
        f"home={expected_home}",
        "path=/bin",
    ]
    assert result.summary.exit_code == 0
    result.assert_powered_off_cleanly()


def test_rootfs_read_only_overlay_writable_and_size_limited(boot_guest, erofs_rootfs):
    image_digest = hashlib.sha256(erofs_rootfs.read_bytes()).hexdigest()
    script = (
        "echo changed > /bin/new-file && cat /bin/new-file; "
        'awk \'$2=="/"{print "root="$1" "$3}\' /proc/mounts; '
        'awk \'$2=="/tmp"{print "tmp="$3}\' /proc/mounts; '
        "dd if=/dev/zero of=/fill bs=1M count=64 2>&1 | grep -o 'No space left on device'; "
        "echo fill_kib=$(du -k /fill | cut -f1)"
    )

    result = boot_guest(shell(script, overlay_size_mib=8), rootfs=erofs_rootfs)

    lines = result.stdout_lines
    assert lines[:4] == ["changed", "root=overlay overlay", "tmp=tmpfs", "No space left on device"]
    fill_kib = int(lines[4].removeprefix("fill_kib="))
    assert 4 * 1024 < fill_kib <= 8 * 1024
    assert hashlib.sha256(erofs_rootfs.read_bytes()).hexdigest() == image_digest
    result.assert_powered_off_cleanly()


def test_ext4_rootfs_attached_writable_is_still_never_written(boot_guest, ext4_rootfs):
    image_digest = hashlib.sha256(ext4_rootfs.read_bytes()).hexdigest()
    config = shell("echo data > /etc/passwd && rm -rf /bin/busybox; sync; echo done", rootfs_type="ext4")

    result = boot_guest(config, rootfs=ext4_rootfs, rootfs_readonly=False)

    assert result.stdout_lines == ["done"]
    assert hashlib.sha256(ext4_rootfs.read_bytes()).hexdigest() == image_digest
    result.assert_powered_off_cleanly()


def test_stop_sends_sigterm_and_reports_the_apps_exit(boot_guest, erofs_rootfs):
    config = shell(
        "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        stop_grace_s=30,
    )

    control_lines = []

    def stop_when_ready(guest):
        guest.wait_for_stdout("ready")
        guest.send_control(STOP_COMMAND)
        control_lines.extend(guest.read_control_until(b"exit ").decode().splitlines())

    result = boot_guest(config, rootfs=erofs_rootfs, interact=stop_when_ready)

    assert [line.split()[0] for line in control_lines] == ["stopping", "oom", "exit"]
    assert control_lines[-1] == "exit 0"
    assert result.stdout_lines == ["ready", "got TERM"]
    assert result.summary.exit_code == 0
    assert "stopping" in [e.name for e in events(result.log)]
    assert "killing" not in [e.name for e in events(result.log)]
    result.assert_powered_off_cleanly()


def test_an_app_ignoring_sigterm_is_killed_after_the_grace(boot_guest, erofs_rootfs):
    config = shell("trap '' TERM; echo ready; while true; do sleep 1; done", stop_grace_s=1)

    def stop_when_ready(guest):
        guest.wait_for_stdout("ready")
        guest.send_control(STOP_COMMAND)

    result = boot_guest(config, rootfs=erofs_rootfs, interact=stop_when_ready)

    timeline = {e.name: e for e in events(result.log)}
    assert result.summary.exit_code == 137
    assert timeline["killing"].monotonic_ms - timeline["stopping"].monotonic_ms >= 1000
    result.assert_powered_off_cleanly()


@pytest.mark.parametrize(
    ("argv", "error", "exit_code"),
    [
        (("no-such-app", "arg"), "exec: no-such-app: no such file or directory", 127),
        (("/bin/not-executable",), "exec: /bin/not-executable: permission denied", 126),
    ],
)
def test_an_entrypoint_that_cannot_run_is_a_clear_error(boot_guest, erofs_rootfs, argv, error, exit_code):
    control_lines = []

    def listen_on_control(guest):
        guest.connect_control()  # before the guest boots, so nothing is dropped
        control_lines.extend(guest.read_control_until(b"exit ").decode().splitlines())

    result = boot_guest(dataclasses.replace(BASE, argv=argv), rootfs=erofs_rootfs, interact=listen_on_control)

    assert control_lines[1:] == [f"error {error}", "oom 0", f"exit {exit_code}"]
    assert control_lines[0].startswith("init ")
    assert result.summary.errors == (error,)
    assert result.summary.exit_code == exit_code
    assert result.summary.started_ms is None
    assert f"hvinit: error: {error}" in result.console
    result.assert_powered_off_cleanly()


def test_orphans_are_reaped_by_pid1(boot_guest, erofs_rootfs):
    script = (
        "orphan=$(sh -c 'sleep 0.5 >/dev/null 2>&1 & echo $!'); "
        "echo orphan_parent=$(cut -d' ' -f4 /proc/$orphan/stat); "
        "sleep 2; "
        "zombies=0; for f in /proc/[0-9]*/stat; do "
        '  set -- $(cat $f 2>/dev/null); [ "$3" = Z ] && zombies=$((zombies+1)); '
        "done; "
        "echo zombies=$zombies; [ -e /proc/$orphan ] && echo orphan_still_there || echo orphan_gone"
    )

    result = boot_guest(shell(script), rootfs=erofs_rootfs)

    assert result.stdout_lines == ["orphan_parent=1", "zombies=0", "orphan_gone"]
    result.assert_powered_off_cleanly()


def test_an_oom_killed_app_is_reported(boot_guest, erofs_rootfs):
    # dd fills a buffer of its block size: 400 MiB cannot fit in a 256 MiB guest (with
    # overcommit on, malloc succeeds and the OOM killer has to act).
    config = shell("echo 1 > /proc/sys/vm/overcommit_memory; exec dd if=/dev/zero of=/dev/null bs=400M count=1")

    result = boot_guest(config, rootfs=erofs_rootfs)

    assert result.summary.exit_code == 137
    assert result.summary.oom is True
    result.assert_powered_off_cleanly()


def test_a_garbage_config_disk_is_reported_and_powers_off(boot_guest, erofs_rootfs):
    garbage = random.Random(7).randbytes(4096)

    result = boot_guest(None, rootfs=erofs_rootfs, config_image=garbage)

    assert result.summary.errors == ("config: bad magic (not a HyperVM config disk)",)
    assert result.summary.exit_code == 125
    result.assert_powered_off_cleanly()


def test_a_missing_rootfs_disk_is_reported_and_powers_off(boot_guest, erofs_rootfs):
    config = dataclasses.replace(BASE, rootfs_serial="hvm-missing")

    result = boot_guest(config, rootfs=erofs_rootfs)

    assert result.summary.errors == ("rootfs disk (serial hvm-missing) not found",)
    assert result.summary.exit_code == 125
    result.assert_powered_off_cleanly()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_user_mode_network_is_configured(boot_guest, erofs_rootfs):
    host_port = _free_port()
    config = shell(
        "ip -4 -o addr show lo | awk '{print $4}'; ip -4 -o addr show eth0 | awk '{print $4}'; "
        "ip route | grep default; cat /etc/resolv.conf; "
        "echo ready; echo hello-from-guest | nc -l -p 8080",
        network=GuestNetwork(ip_cidr="10.0.2.15/24", gateway="10.0.2.2", nameservers=("10.0.2.3",)),
    )
    received = []

    def connect_from_host(guest):
        guest.wait_for_stdout("ready")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", host_port), timeout=5) as conn:
                data = conn.recv(100)
            if data:  # QEMU accepts before the guest listens; an empty read means retry
                received.append(data)
                return
            time.sleep(0.2)

    result = boot_guest(
        config,
        rootfs=erofs_rootfs,
        extra_qemu_args=(
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-:8080",
            "-device",
            "virtio-net-pci,netdev=n0",
        ),
        interact=connect_from_host,
    )

    assert result.stdout_lines[:5] == [
        "127.0.0.1/8",
        "10.0.2.15/24",
        "default via 10.0.2.2 dev eth0 ",
        "nameserver 10.0.2.3",
        "ready",
    ]
    assert received == [b"hello-from-guest\n"]
    assert result.summary.exit_code == 0
    result.assert_powered_off_cleanly()
