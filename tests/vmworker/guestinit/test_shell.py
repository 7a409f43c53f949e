"""Shell sessions on the control port, booted for real: a PTY in the container (the app's root,
env and user), typed input, resize, Ctrl-C, exit codes, one-shot commands, flow control by
acks, the session cap, and hostile requests refused without harm."""

from __future__ import annotations

import random
import socket
import time

import pytest

from tests.support.guest_qemu import ROOTFS_SERIAL
from vmworker.guestinit import STOP_COMMAND, GuestConfig
from vmworker.guestinit.protocol import (
    SHELL_MAX_SESSIONS,
    SHELL_WINDOW_BYTES,
    ControlLineReader,
    ShellError,
    ShellExit,
    ShellOpened,
    ShellOutput,
    exec_request,
    parse_exec_result,
    parse_shell_message,
    shell_ack,
    shell_close,
    shell_input,
    shell_open,
    shell_resize,
)

pytestmark = pytest.mark.vm

APP = GuestConfig(
    hostname="hvm-shell",
    argv=("/bin/sh", "-c", "echo ready; while true; do sleep 0.2; done"),
    env=("PATH=/bin", "APP_MARK=from-the-app"),
    working_dir="/home/app",
    user="app",
    rootfs_serial=ROOTFS_SERIAL,
    rootfs_type="erofs",
    overlay_size_mib=16,
    stop_grace_s=1,
)


def random_shell_lines(rng: random.Random, count: int) -> bytes:
    """Host-side garbage for the guest's parser: sh- verbs with random arguments."""
    pieces = ["sh-open", "sh-in", "sh-ack", "sh-resize", "sh-", "sh-in target", "sh-ack target", "sh-resize target"]
    tokens = [
        "target",
        "x" * 40,
        "-1",
        "0",
        "99999999999",
        "4294967296",
        "=",
        "====",
        "QUJD",
        "tty",
        "run",
        "ff" * 3000,
        "\x00",
    ]
    lines = []
    for _ in range(count):
        words = [rng.choice(pieces)] + [rng.choice(tokens) for _ in range(rng.randrange(0, 6))]
        lines.append(" ".join(words))
    return ("\n".join(lines) + "\n").encode(errors="replace")


class ShellPort:
    """The host's end of the control port, as the exec agent uses it (acks unless told not to)."""

    def __init__(self, guest):
        guest.connect_control()
        self.sock: socket.socket = guest._control
        self.reader = ControlLineReader()
        self.output: dict[str, bytearray] = {}
        self.ends: dict[str, object] = {}
        self.opened: set[str] = set()
        self.other: list[bytes] = []
        self.ack = True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self, timeout_s: float) -> None:
        self.sock.settimeout(timeout_s)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        assert chunk, "the guest closed the control port"
        for line in self.reader.feed(chunk):
            message = parse_shell_message(line)
            if isinstance(message, ShellOutput):
                self.output.setdefault(message.session_id, bytearray()).extend(message.data)
                if self.ack:
                    self.send(shell_ack(message.session_id, len(message.data)))
            elif isinstance(message, ShellOpened):
                self.opened.add(message.session_id)
            elif isinstance(message, ShellExit | ShellError):
                self.ends[message.session_id] = message
            elif message is None:
                self.other.append(line)
            else:
                raise AssertionError(f"malformed guest line {line!r}")

    def until(self, condition, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; output so far: {dict(self.output)!r} ends {self.ends!r}"
            self.pump(min(remaining, 0.5))

    def text(self, session_id: str) -> str:
        return bytes(self.output.get(session_id, b"")).decode(errors="replace")

    def type(self, session_id: str, text: str) -> None:
        for line in shell_input(session_id, text.encode()):
            self.send(line)

    def wait_text(self, session_id: str, text: str, timeout_s: float = 30) -> None:
        self.until(lambda: text in self.text(session_id), timeout_s)


def test_an_interactive_shell_types_resizes_interrupts_and_exits(boot_guest, erofs_rootfs):
    seen = {}

    def session(guest):
        guest.wait_for_stdout("ready")
        port = ShellPort(guest)
        port.send(shell_open("s1", rows=24, cols=80))
        port.until(lambda: "s1" in port.opened)
        port.type("s1", "echo host=$HOSTNAME mark=$APP_MARK user=$(id -un) dir=$(pwd); ls /\r")
        port.wait_text("s1", "host=hvm-shell mark=from-the-app user=app dir=/home/app")
        port.wait_text("s1", "proc")
        port.type("s1", "stty size\r")
        port.wait_text("s1", "24 80")
        port.send(shell_resize("s1", rows=40, cols=132))
        port.type("s1", "stty size\r")
        port.wait_text("s1", "40 132")
        port.type("s1", "sleep 100; echo after-sleep-$?\r")
        time.sleep(1.5)
        started = time.monotonic()
        port.type("s1", "\x03")
        port.type("s1", "echo interrupted\r")
        port.wait_text("s1", "interrupted\r\n")
        seen["interrupt_s"] = time.monotonic() - started
        port.type("s1", "exit 3\r")
        port.until(lambda: "s1" in port.ends)
        seen["end"] = port.ends["s1"]
        seen["text"] = port.text("s1")
        guest.send_control(STOP_COMMAND)

    result = boot_guest(APP, rootfs=erofs_rootfs, interact=session)

    assert seen["end"] == ShellExit("s1", 3)
    assert seen["interrupt_s"] < 20  # Ctrl-C ended `sleep 100` (it would have taken 100 s)
    assert b"sh-" not in result.log  # sessions stay off the durable log
    result.assert_powered_off_cleanly()


def test_one_shot_commands_flow_control_the_session_cap_and_bad_requests(boot_guest, erofs_rootfs):
    seen = {}

    def session(guest):
        guest.wait_for_stdout("ready")
        port = ShellPort(guest)
        port.send(shell_open("run1", rows=24, cols=80, tty=False, command="printf 'a\\nb\\n'; echo err >&2; exit 7"))
        port.until(lambda: "run1" in port.ends)
        seen["run"] = (bytes(port.output.get("run1", b"")), port.ends["run1"])

        # Nobody acks: the guest stops at the window and the shell blocks.
        port.ack = False
        port.send(shell_open("bulk", rows=24, cols=80, tty=False, command="head -c 1000000 /dev/zero | tr '\\0' x"))
        port.until(lambda: len(port.output.get("bulk", b"")) >= SHELL_WINDOW_BYTES, timeout_s=60)
        for _ in range(4):
            port.pump(0.5)
        seen["unacked_cap"] = len(port.output["bulk"])
        port.ack = True
        port.send(shell_ack("bulk", len(port.output["bulk"])))
        port.until(lambda: "bulk" in port.ends, timeout_s=120)
        seen["bulk"] = (len(port.output["bulk"]), port.ends["bulk"])

        # At most SHELL_MAX_SESSIONS at once; a closed one frees its slot.
        for number in range(SHELL_MAX_SESSIONS):
            port.send(shell_open(f"cap{number}", rows=24, cols=80))
        port.until(lambda: all(f"cap{n}" in port.opened for n in range(SHELL_MAX_SESSIONS)))
        port.send(shell_open("one-too-many", rows=24, cols=80))
        port.until(lambda: "one-too-many" in port.ends)
        seen["cap"] = port.ends["one-too-many"]
        port.send(shell_close("cap0"))
        port.until(lambda: "cap0" in port.ends)
        seen["closed"] = port.ends["cap0"]

        # Garbage and malformed requests: ignored or refused, the guest keeps serving.
        port.send(b"sh-open bad!id 24 80 tty\n")
        port.send(b"sh-open ok 0 80 tty\n")
        port.send(b"sh-in cap1 !!!notbase64\n")
        port.send(b"sh-resize cap1 99999 1\n")
        port.send(b"sh-ack cap1 -5\n")
        port.send(b"sh-\n\x00\xff" + b"z" * 20000 + b"\n")
        port.until(lambda: "ok" in port.ends)
        seen["bad_open"] = port.ends["ok"]
        for number in range(1, SHELL_MAX_SESSIONS):
            port.send(shell_close(f"cap{number}"))
        port.until(lambda: all(f"cap{n}" in port.ends for n in range(SHELL_MAX_SESSIONS)))
        # Thousands of random sh- lines (random verbs, ids, numbers and base64-ish text) at a
        # live session: it survives them (what they type is cleared with Ctrl-C).
        port.send(shell_open("target", rows=24, cols=80))
        port.until(lambda: "target" in port.opened)
        port.send(random_shell_lines(random.Random(13), 3000))
        port.send(exec_request("still", "true", 10))
        port.until(lambda: any(line.startswith(b"exec-result still") for line in port.other))
        seen["exec"] = parse_exec_result(next(line for line in port.other if line.startswith(b"exec-result still")))
        port.send(shell_resize("target", rows=24, cols=80))
        port.type("target", "\x03echo al''ive\r")
        port.wait_text("target", "alive\r\n")
        port.send(shell_open("fresh", rows=24, cols=80))
        port.until(lambda: "fresh" in port.opened)
        port.type("fresh", "echo fr''esh\r")
        port.wait_text("fresh", "fresh\r\n")
        guest.send_control(STOP_COMMAND)

    result = boot_guest(APP, rootfs=erofs_rootfs, interact=session)

    output, end = seen["run"]
    assert end == ShellExit("run1", 7)
    assert output == b"a\nb\nerr\n"  # raw: no \r added, stderr on the same terminal
    assert seen["unacked_cap"] == SHELL_WINDOW_BYTES
    assert seen["bulk"] == (1_000_000, ShellExit("bulk", 0))
    assert seen["cap"] == ShellError("one-too-many", f"{SHELL_MAX_SESSIONS} shell sessions are open already")
    assert seen["closed"] == ShellExit("cap0", 129)  # SIGHUP
    assert seen["bad_open"] == ShellError("ok", "malformed sh-open")
    assert seen["exec"].outcome == "exit" and seen["exec"].exit_code == 0
    result.assert_powered_off_cleanly()
