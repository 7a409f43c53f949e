"""The exec client command (python -m portal.exec_client) as a user runs it, against daphne (the
live stack) and a real exec agent whose guest end is scripted (tests/portal/test_exec.py): an
interactive shell fed from a pipe exits with the shell's code, a one-shot command prints its
output and exits with its code, a viewer's token is refused with the reason; an id prefix works."""

# ruff: noqa: F811 (fixtures imported from the consumer tests)
from __future__ import annotations

import base64
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tenants.services import api_token_create
from tests.portal.test_consumers import app, host, instance, viewer  # noqa: F401
from tests.portal.test_exec import developer, guest_agent, running  # noqa: F401
from tests.support.live_stack import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def client(live_stack, key, *args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "portal.exec_client", "--url", live_stack.url, *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=live_stack.env | {"PORTAL_TOKEN": key},
        timeout=60,
    )


def test_the_client_opens_a_shell_runs_a_command_and_reports_refusals(
    live_stack, tenant, developer, viewer, running, guest_agent
):
    _, key = api_token_create(user=developer, name="cli", tenant=tenant)
    _, viewer_key = api_token_create(user=viewer, name="cli", tenant=tenant)
    prefix = str(running.pk)[:8]

    shell = client(live_stack, key, tenant.slug, prefix, stdin=b"echo hi\rexit 3")
    one_shot = client(live_stack, key, tenant.slug, str(running.pk), "--", "echo", "two words")
    refused = client(live_stack, viewer_key, tenant.slug, prefix)
    unknown = client(live_stack, key, tenant.slug, "ffffffff")

    assert shell.returncode == 3, shell.stderr
    assert shell.stdout == b"$ echo hi\rexit 3"
    assert (one_shot.returncode, one_shot.stdout) == (0, b"echo 'two words'\n"), one_shot.stderr
    assert refused.returncode == 1 and b"needs the developer role" in refused.stderr
    assert unknown.returncode == 1 and b"0 instances" in unknown.stderr


def read_until(fd: int, marker: bytes, timeout_s: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen
        if select.select([fd], [], [], remaining)[0]:
            seen += os.read(fd, 4096)
    return seen


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_on_a_terminal_the_client_sends_its_size_and_follows_a_resize(
    live_stack, tenant, developer, running, guest_agent
):
    _, key = api_token_create(user=developer, name="cli", tenant=tenant)
    master, slave = pty.openpty()
    set_size(slave, 33, 111)
    process = subprocess.Popen(
        [sys.executable, "-m", "portal.exec_client", "--url", live_stack.url, tenant.slug, str(running.pk)],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=live_stack.env | {"PORTAL_TOKEN": key},
    )
    os.close(slave)
    try:
        read_until(master, b"$ ")  # the prompt: the shell is open
        set_size(master, 50, 160)
        process.send_signal(signal.SIGWINCH)
        os.write(master, b"echo hi\r")
        typed = read_until(master, b"echo hi\r")
        os.write(master, b"exit 4")
        assert process.wait(timeout=30) == 4, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    opens = [line for line in guest_agent.requests if line.startswith(b"sh-open ")]
    assert opens and opens[-1].split()[2:5] == [b"33", b"111", b"tty"]
    assert any(line.startswith(b"sh-resize ") and line.split()[2:] == [b"50", b"160"] for line in guest_agent.requests)
    typed_remotely = b"".join(
        base64.b64decode(line.split()[2]) for line in guest_agent.requests if line.startswith(b"sh-in ")
    )
    assert typed_remotely.startswith(b"echo hi\r")  # raw mode: Enter went as typed (cooked would send \n)
    assert b"echo hi" in typed
