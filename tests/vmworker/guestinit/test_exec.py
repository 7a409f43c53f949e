"""Exec requests on the control port, booted for real: the guest init runs health-check
commands inside the container (the app's root, env, user and working dir), with a timeout."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from tests.support import guest_qemu
from tests.support.guest_qemu import ROOTFS_SERIAL
from vmworker.guestinit import STOP_COMMAND, GuestConfig
from vmworker.guestinit.protocol import ExecResult, exec_request, parse_exec_result

pytestmark = pytest.mark.vm

APP = GuestConfig(
    hostname="hvm-exec",
    argv=("/bin/sh", "-c", "echo ready; while true; do sleep 0.2; done"),
    env=("PATH=/bin", "CHECK_ME=yes"),
    working_dir="/home/app",
    user="app",
    rootfs_serial=ROOTFS_SERIAL,
    rootfs_type="erofs",
    overlay_size_mib=16,
    stop_grace_s=1,
)


def run_exec(guest, request_id: str, command: str, timeout_s: float = 10) -> ExecResult:
    guest.send_control(exec_request(request_id, command, timeout_s))
    received = guest.read_control_until(f"exec-result {request_id} ".encode())
    results = [parse_exec_result(line) for line in received.split(b"\n")]
    return next(r for r in results if r is not None and r.request_id == request_id)


def test_commands_run_in_the_container_with_the_apps_env_user_and_workdir(boot_guest, erofs_rootfs):
    results = {}

    def checks(guest):
        guest.wait_for_stdout("ready")
        results["env"] = run_exec(guest, "env", 'test "$CHECK_ME" = yes')
        results["user"] = run_exec(guest, "user", 'test "$(id -un)" = app && test "$(pwd)" = /home/app')
        results["fails"] = run_exec(guest, "fails", "exit 3")
        results["no-such"] = run_exec(guest, "no-such", "no-such-program")
        results["timeout"] = run_exec(guest, "timeout", "sleep 30", timeout_s=1)
        results["after-timeout"] = run_exec(guest, "after", "true")
        guest.send_control(STOP_COMMAND)

    result = boot_guest(APP, rootfs=erofs_rootfs, interact=checks)

    assert results["env"] == ExecResult("env", "exit", exit_code=0)
    assert results["user"] == ExecResult("user", "exit", exit_code=0)
    assert results["fails"] == ExecResult("fails", "exit", exit_code=3)
    assert results["no-such"] == ExecResult("no-such", "exit", exit_code=127)
    assert results["timeout"] == ExecResult("timeout", "timeout")
    assert results["after-timeout"] == ExecResult("after", "exit", exit_code=0)
    # Exec results stay off the durable log: only the app's output and events are there.
    assert b"exec-result" not in result.log
    assert result.stdout_lines == ["ready"]
    result.assert_powered_off_cleanly()


@pytest.fixture(scope="module")
def rootfs_without_shell(rootfs_tree, tmp_path_factory):
    tree = tmp_path_factory.mktemp("no-shell") / "root"
    shutil.copytree(rootfs_tree, tree, symlinks=True)
    (tree / "bin/sh").unlink()
    return guest_qemu.make_erofs(tree, tmp_path_factory.mktemp("no-shell-fs") / "rootfs.erofs")


def test_an_image_without_bin_sh_answers_with_a_clear_error(boot_guest, rootfs_without_shell):
    config = dataclasses.replace(
        APP, argv=("/bin/busybox", "sh", "-c", "echo ready; sleep 600"), user="", working_dir=""
    )
    results = {}

    def checks(guest):
        guest.wait_for_stdout("ready")
        results["check"] = run_exec(guest, "nosh", "true")
        guest.send_control(STOP_COMMAND)

    boot_guest(config, rootfs=rootfs_without_shell, interact=checks)

    assert results["check"] == ExecResult(
        "nosh", "error", message="cannot run /bin/sh in the image: no such file or directory"
    )
