"""The control relay (vmworker.control_relay) against a fake guest on a unix socket: the runtime's
stop and exec requests reach the guest through it (and nothing else a relay client says), guest
garbage never breaks it, a guest that stops reading ends the connection instead of stalling the
agent; and the runtime takes the relay when one listens, QEMU's socket when not."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from tests.vmworker.test_runtime import fake_domain
from vmworker.control_relay import SEND_QUEUE_MAX_LINES, GuestControl, coalesce_output, relay_socket_path
from vmworker.driver.fake import FakeHost
from vmworker.guestinit.protocol import SHELL_CHUNK_BYTES, ShellExit, ShellOpened, ShellOutput
from vmworker.runtime import HyperVMRuntime, RuntimeSettings


async def start_guest(path, *, greeting: bytes, read: bool = True):
    """A fake guest end of the control port: sends ``greeting``, records what it is sent, and
    answers a stop with its ``stopping`` event."""
    received = bytearray()
    connected = asyncio.Event()

    async def serve(reader, writer):
        connected.set()
        writer.write(greeting)
        await writer.drain()
        while read and (chunk := await reader.read(65536)):
            received.extend(chunk)
            if b"stop\n" in chunk:
                writer.write(b"stopping 12.5\n")
        if not read:
            await asyncio.sleep(3600)

    server = await asyncio.start_unix_server(serve, path=str(path))
    return server, received, connected


def test_the_relay_passes_stop_and_exec_only_and_survives_guest_garbage(tmp_path):
    control_socket = tmp_path / "vm.sock"

    async def scenario():
        garbage = b"\x00\xff" * 10 + b"\nsh-out s1 !!!\nsh-exit s1 999\n" + b"x" * 100_000 + b"\n"
        greeting = garbage + b"sh-out s1 aGk=\nsh-exit s1 0\n"
        server, received, _ = await start_guest(control_socket, greeting=greeting)
        messages, closed = [], asyncio.Event()

        async def on_closed(control):
            closed.set()

        control = GuestControl(
            instance_id="i", control_socket=control_socket, on_shell_message=_append(messages), on_closed=on_closed
        )
        await control.open()
        reader, writer = await asyncio.open_unix_connection(str(relay_socket_path(control_socket)))
        writer.write(b"stop\nsh-close s1\nexec a 100 74727565\nwhatever\n")
        await writer.drain()
        relayed = await asyncio.wait_for(reader.readline(), 10)
        for _ in range(100):
            if b"exec a" in received:
                break
            await asyncio.sleep(0.02)
        writer.close()
        await control.close()
        server.close()
        return messages, bytes(received), relayed, closed.is_set()

    messages, received, relayed, closed = asyncio.run(scenario())
    assert messages == [ShellOutput("s1", b"hi"), ShellExit("s1", 0)]  # garbage dropped, never raised
    assert received == b"stop\nexec a 100 74727565\n"  # no sh- line and no junk from a relay client
    assert relayed == b"stopping 12.5\n"  # guest events go back to relay clients
    assert closed
    assert not relay_socket_path(control_socket).exists()


def test_output_pieces_read_together_go_on_as_fewer_messages_in_order(tmp_path):
    """seq's one-line-per-write output: 2,000 pieces arriving at once go on as full messages (at
    most SHELL_CHUNK_BYTES each), every byte in order, and other sessions' pieces and other
    messages keep their places."""
    control_socket = tmp_path / "vm.sock"
    lines = [f"{n}\r\n".encode() for n in range(1, 2001)]
    expected = b"".join(lines)
    greeting = b"".join(b"sh-out s1 " + base64.b64encode(line) + b"\n" for line in lines)
    greeting += b"sh-out s2 " + base64.b64encode(b"other") + b"\nsh-out s1 " + base64.b64encode(b"end") + b"\n"
    greeting += b"sh-exit s1 0\n"

    async def scenario():
        server, _, _ = await start_guest(control_socket, greeting=greeting)
        messages = []

        async def on_closed(control):
            pass

        control = GuestControl(
            instance_id="i", control_socket=control_socket, on_shell_message=_append(messages), on_closed=on_closed
        )
        await control.open()
        for _ in range(250):
            if messages and isinstance(messages[-1], ShellExit):
                break
            await asyncio.sleep(0.02)
        await control.close()
        server.close()
        return messages

    messages = asyncio.run(scenario())
    s1 = [m for m in messages if isinstance(m, ShellOutput) and m.session_id == "s1"]
    assert b"".join(m.data for m in s1) == expected + b"end"
    assert all(len(m.data) <= SHELL_CHUNK_BYTES for m in s1)
    assert len(s1) < len(lines) / 10, len(s1)  # 2,001 pieces; 10,893 bytes fit in a few messages
    others = [m for m in messages if not (isinstance(m, ShellOutput) and m.session_id == "s1")]
    assert others == [ShellOutput("s2", b"other"), ShellExit("s1", 0)]
    assert messages.index(ShellOutput("s2", b"other")) < messages.index(s1[-1])  # s1's "end" came after


def test_coalesce_output_never_joins_across_sessions_other_messages_or_the_cap():
    big = b"x" * (SHELL_CHUNK_BYTES - 1)
    messages = [
        ShellOutput("a", b"1"),
        ShellOutput("a", b"2"),
        ShellOpened("a"),
        ShellOutput("a", b"3"),
        ShellOutput("b", b"4"),
        ShellOutput("b", big),
        ShellOutput("b", b"5"),
        ShellOutput("b", b"6"),
    ]
    assert coalesce_output(messages) == [
        ShellOutput("a", b"12"),
        ShellOpened("a"),
        ShellOutput("a", b"3"),
        ShellOutput("b", b"4" + big),
        ShellOutput("b", b"56"),
    ]
    assert coalesce_output([]) == []


def test_a_guest_that_stops_reading_ends_its_connection(tmp_path):
    control_socket = tmp_path / "vm.sock"

    async def scenario():
        server, _, _ = await start_guest(control_socket, greeting=b"", read=False)
        closed = asyncio.Event()

        async def on_closed(control):
            closed.set()

        control = GuestControl(
            instance_id="i", control_socket=control_socket, on_shell_message=_append([]), on_closed=on_closed
        )
        await control.open()
        accepted = 0
        for _ in range(SEND_QUEUE_MAX_LINES * 50):
            if not control.send(b"sh-in s1 " + b"A" * 5000 + b"\n"):
                break
            accepted += 1
            await asyncio.sleep(0)
        await asyncio.wait_for(closed.wait(), 10)
        server.close()
        return accepted

    accepted = asyncio.run(scenario())
    assert accepted < SEND_QUEUE_MAX_LINES * 50  # refused (and closed) once the queue was full


def _append(messages):
    async def on_message(message):
        messages.append(message)

    return on_message


@pytest.mark.parametrize("relay", ["listening", "stale", "absent"])
def test_the_runtime_stops_through_the_relay_when_one_listens(tmp_path, relay):
    host = FakeHost()
    socket_root = Path(tempfile.mkdtemp(prefix="hvr-"))  # unix socket paths must stay short
    settings = RuntimeSettings(state_dir=tmp_path / "state", socket_root=socket_root)
    runtime = HyperVMRuntime(settings, host=host)
    instance_id = str(uuid.uuid4())
    directory = runtime.instance_dir(instance_id)
    directory.mkdir(parents=True)
    info = {"instance_id": instance_id, "name": "x", "image": "x", "ports": [], "created_at": 1.0}
    (directory / "instance.json").write_text(json.dumps(info))
    (directory / "guest.log").write_bytes(b"init 1.0\nstarted 2.0\n")
    host.define_and_start(fake_domain(tmp_path, instance_id))
    runtime.socket_dir.mkdir(parents=True)
    heard = {}
    listeners = []
    for name, path in (
        ("qemu", runtime.control_socket(instance_id)),
        ("relay", relay_socket_path(runtime.control_socket(instance_id))),
    ):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        if name == "relay" and relay != "listening":
            listener.close()  # a stale socket file: connecting is refused
            if relay == "absent":
                path.unlink()
            continue
        listener.listen(1)
        listeners.append((name, listener))

    def accept(name, listener):
        connection, _ = listener.accept()
        heard[name] = connection.recv(100)
        connection.close()

    threads = [threading.Thread(target=accept, args=pair, daemon=True) for pair in listeners]
    for thread in threads:
        thread.start()
    runtime.request_stop(instance_id, grace_s=1)
    for thread in threads:
        thread.join(timeout=1)
    shutil.rmtree(socket_root)
    assert heard == ({"relay": b"stop\n"} if relay == "listening" else {"qemu": b"stop\n"})
