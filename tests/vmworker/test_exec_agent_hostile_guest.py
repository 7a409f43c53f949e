"""The exec agent (vmworker.exec_agent) against hostile guests (fake guest ends of the control port
on unix sockets) and the real Redis channel layer: a guest that ignores its output window gets its
session closed once it is past the window, instead of having the host pass on whatever it sends;
and a guest's shell messages reach only the sessions of its own instance (a guest that names a
session of another instance on the same host cannot write into that shell or end it); a guest
repeating sh-opened makes one message to the client, not one per line."""

from __future__ import annotations

import asyncio
import binascii
import time
import uuid

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from vmworker.exec_agent import ExecAgent
from vmworker.guestinit.protocol import SHELL_CHUNK_BYTES, SHELL_WINDOW_BYTES

RECEIVE_TIMEOUT_S = 10
QUIET_S = 1.5


def redis_layer() -> RedisChannelLayer:
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


async def start_guest(path, on_open):
    """A fake guest: for each ``sh-open <id> ...`` line it writes what ``on_open(id)`` returns;
    it records everything the host sends."""
    received = bytearray()

    async def serve(reader, writer):
        while line := await reader.readline():
            received.extend(line)
            if line.startswith(b"sh-open "):
                writer.write(on_open(line.split(b" ")[1].decode()))
                await writer.drain()

    server = await asyncio.start_unix_server(serve, path=str(path))
    return server, received


async def open_session(agent, client, instance_id, tenant: str = "t1"):
    reply_to = await client.new_channel()
    session = uuid.uuid4().hex
    request = {"type": "exec.open", "session": session, "instance_id": instance_id, "reply_to": reply_to}
    request["tenant"] = tenant
    await agent.handle(request | {"rows": 24, "cols": 80, "sent_at": time.time()})
    return session, reply_to


async def drain(client, reply_to, *, until_quiet_s: float) -> list[dict]:
    """Every message on ``reply_to`` until none came for ``until_quiet_s`` (or a last one)."""
    messages = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(client.receive(reply_to), until_quiet_s)
        except TimeoutError:
            break
        messages.append(message)
        if message["type"] in ("exec.exit", "exec.error"):
            break
    return messages


def output_of(messages) -> bytes:
    return b"".join(binascii.a2b_base64(m["data"]) for m in messages if m["type"] == "exec.output")


def make_agent(sockets: dict) -> ExecAgent:
    agent = ExecAgent(
        host_name=f"test-hostile-{uuid.uuid4().hex[:8]}",
        control_socket=lambda instance_id: sockets[instance_id],
        layer_factory=redis_layer,
    )
    agent.layer = redis_layer()  # driven directly here, without the agent's thread
    return agent


@pytest.mark.timeout(60)
def test_a_guest_past_its_output_window_loses_the_session(tmp_path):
    chunk = binascii.b2a_base64(b"y" * SHELL_CHUNK_BYTES, newline=False)
    chunks = 3 * SHELL_WINDOW_BYTES // SHELL_CHUNK_BYTES  # three windows, never acked

    def flood(session_id):
        out = f"sh-out {session_id} ".encode() + chunk + b"\n"
        return f"sh-opened {session_id}\n".encode() + out * chunks

    async def scenario():
        instance = str(uuid.uuid4())
        server, received = await start_guest(tmp_path / "a.sock", flood)
        agent = make_agent({instance: tmp_path / "a.sock"})
        client = redis_layer()
        session, reply_to = await open_session(agent, client, instance)
        messages = await drain(client, reply_to, until_quiet_s=QUIET_S)
        for _ in range(50):
            if f"sh-close {session}".encode() in received:
                break
            await asyncio.sleep(0.05)
        sessions = dict(agent.sessions)
        for control in list(agent.controls.values()):
            await control.close()
        server.close()
        await client.close_pools()
        await agent.layer.close_pools()
        return session, messages, bytes(received), sessions

    session, messages, received, sessions = asyncio.run(scenario())
    assert len(output_of(messages)) <= SHELL_WINDOW_BYTES
    assert messages[-1]["type"] == "exec.error", [m["type"] for m in messages[-3:]]
    assert "window" in messages[-1]["message"]
    assert f"sh-close {session}\n".encode() in received  # the guest is told to end the shell
    assert session not in sessions


@pytest.mark.timeout(60)
def test_a_guest_cannot_write_into_or_end_another_instances_session(tmp_path):
    victim_session = {}

    def honest(session_id):
        return f"sh-opened {session_id}\n".encode()

    def hostile(session_id):
        target = victim_session["id"]
        injected = binascii.b2a_base64(b"rm -rf / # injected", newline=False)
        return (
            f"sh-opened {session_id}\n".encode()
            + f"sh-out {target} ".encode()
            + injected
            + f"\nsh-exit {target} 0\nsh-error {target} gone\n".encode()
        )

    async def scenario():
        victim, attacker = str(uuid.uuid4()), str(uuid.uuid4())
        server_a, _ = await start_guest(tmp_path / "a.sock", honest)
        server_b, _ = await start_guest(tmp_path / "b.sock", hostile)
        agent = make_agent({victim: tmp_path / "a.sock", attacker: tmp_path / "b.sock"})
        client = redis_layer()
        session, victim_reply = await open_session(agent, client, victim)
        victim_session["id"] = session
        opened = await drain(client, victim_reply, until_quiet_s=QUIET_S)
        _, attacker_reply = await open_session(agent, client, attacker)
        attacker_messages = await drain(client, attacker_reply, until_quiet_s=QUIET_S)
        after = await drain(client, victim_reply, until_quiet_s=QUIET_S)
        still_open = session in agent.sessions
        for control in list(agent.controls.values()):
            await control.close()
        server_a.close()
        server_b.close()
        await client.close_pools()
        await agent.layer.close_pools()
        return opened, attacker_messages, after, still_open

    opened, attacker_messages, after, still_open = asyncio.run(scenario())
    assert [m["type"] for m in opened] == ["exec.opened"]
    assert [m["type"] for m in attacker_messages] == ["exec.opened"]
    assert after == []  # nothing from the other instance's guest reached the victim's shell
    assert still_open


@pytest.mark.timeout(60)
def test_a_guest_repeating_sh_opened_gets_one_opened_to_the_client(tmp_path):
    def repeat(session_id):
        return f"sh-opened {session_id}\n".encode() * 500 + f"sh-exit {session_id} 0\n".encode()

    async def scenario():
        instance = str(uuid.uuid4())
        server, _ = await start_guest(tmp_path / "a.sock", repeat)
        agent = make_agent({instance: tmp_path / "a.sock"})
        client = redis_layer()
        _, reply_to = await open_session(agent, client, instance)
        messages = await drain(client, reply_to, until_quiet_s=QUIET_S)
        for control in list(agent.controls.values()):
            await control.close()
        server.close()
        await client.close_pools()
        await agent.layer.close_pools()
        return messages

    messages = asyncio.run(scenario())
    assert [m["type"] for m in messages] == ["exec.opened", "exec.exit"]
