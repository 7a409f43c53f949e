# ruff: noqa: F811 (the fixtures imported from test_consumers are arguments here)
"""Shells and one-shot commands in an instance (portal.consumers.ExecConsumer, the REST exec
action, portal.services.exec) through the real ASGI app, Redis channel layer, PostgreSQL and a
real exec agent; the guest end is a scripted control port (the real guest is in
tests/portal/test_exec_live.py and tests/vmworker/guestinit/test_shell*.py). Refusals: a viewer
(with the reason), no access, another tenant's instance, one not running, a bad message."""

from __future__ import annotations

import asyncio
import base64
import binascii
import tempfile
import threading
import time
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from portal.choices import InstanceStatus
from portal.consumers import MESSAGES_BURST
from portal.models import Instance
from tenants.choices import AuditAction, TenantRole
from tenants.models import AuditEntry, Membership
from tenants.services import api_token_create
from tests.portal.test_consumers import (  # noqa: F401 (fixtures)
    Socket,
    app,
    host,
    instance,
    other_app,
    run,
    session_cookie,
    viewer,
)
from vmworker.exec_agent import ExecAgent
from vmworker.guestinit.protocol import SHELL_WINDOW_BYTES

pytestmark = pytest.mark.django_db(transaction=True)


class ScriptedGuest:
    """A control port that answers like hvinit: sh-open -> sh-opened and a prompt; typed text is
    echoed; "exit N" ends the session with N; a one-shot command prints its text and exits 0.
    Typing "flood N" streams N bytes (the one-shot "yes": without end) in 4 KiB chunks, keeping
    to the window as hvinit does (at most SHELL_WINDOW_BYTES unacked); ``sent`` counts them."""

    def __init__(self, path: Path):
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.requests: list[bytes] = []
        self.sent = 0  # flood bytes written
        self.acked: dict[str, int] = {}
        self.acks = asyncio.Event()
        self.closed: set[str] = set()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_unix_server(self._serve, path=str(self.path)))
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        while line := await reader.readline():
            self.requests.append(line)
            verb, session, *rest = line.decode().split()
            if verb == "sh-open":
                writer.write(f"sh-opened {session}\n".encode())
                if rest[2] == "run" and bytes.fromhex(rest[3]) == b"hang":
                    pass  # a command that never ends
                elif rest[2] == "run" and bytes.fromhex(rest[3]) == b"yes":
                    asyncio.ensure_future(self._flood(writer, session, None))
                elif rest[2] == "run":
                    text = bytes.fromhex(rest[3]) + b"\n"
                    writer.write(b"sh-out %s %s\n" % (session.encode(), base64.b64encode(text)))
                    writer.write(f"sh-exit {session} 0\n".encode())
                else:
                    writer.write(b"sh-out %s %s\n" % (session.encode(), base64.b64encode(b"$ ")))
            elif verb == "sh-in":
                text = base64.b64decode(rest[0])
                writer.write(b"sh-out %s %s\n" % (session.encode(), base64.b64encode(text)))
                if text.startswith(b"flood "):
                    asyncio.ensure_future(self._flood(writer, session, int(text.split()[1])))
                elif b"exit " in text:
                    code = int(text.rsplit(b"exit ", 1)[1].split()[0])
                    writer.write(f"sh-exit {session} {code}\n".encode())
            elif verb == "sh-ack":
                self.acked[session] = self.acked.get(session, 0) + int(rest[0])
                self.acks.set()
            elif verb == "sh-close":
                self.closed.add(session)
                self.acks.set()
            await writer.drain()

    async def _flood(self, writer, session: str, total: int | None):
        chunk = base64.b64encode(b"y\n" * 2048)  # 4 KiB, as hvinit's largest sh-out
        written = 0
        while (total is None or written < total) and session not in self.closed:
            if written + 4096 - self.acked.get(session, 0) > SHELL_WINDOW_BYTES:
                self.acks.clear()
                await self.acks.wait()  # the window is full: hvinit stops reading the PTY
                continue
            writer.write(b"sh-out %s %s\n" % (session.encode(), chunk))
            written += 4096
            self.sent += 4096
            await writer.drain()
        if session not in self.closed:
            writer.write(f"sh-exit {session} 0\n".encode())
            await writer.drain()

    def stop(self):
        async def shut():
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def running(instance):
    Instance.objects.filter(pk=instance.pk).update(status=InstanceStatus.RUNNING)
    return Instance.objects.select_related("host").get(pk=instance.pk)


@pytest.fixture
def guest_agent(running):
    """The exec agent of the instance's host, reaching a scripted guest for that instance."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    directory = Path(tempfile.mkdtemp(prefix="hvx-"))
    guest = ScriptedGuest(directory / "c.sock")
    agent = ExecAgent(
        host_name=running.host.name,
        control_socket=lambda instance_id: guest.path if instance_id == str(running.pk) else directory / "none",
        layer_factory=lambda: channel_layers.make_backend(DEFAULT_CHANNEL_LAYER),
    )
    agent.start()
    yield guest
    agent.stop()
    guest.stop()


def exec_path(tenant, instance) -> str:
    return f"/ws/t/{tenant.slug}/instances/{instance.pk}/exec/?rows=30&cols=100"


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


def test_a_viewer_is_refused_with_the_reason_and_nothing_is_opened(tenant, viewer, running):
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            return await socket.receive(), await socket.close_code()

    message, code = run(scenario())
    assert code == 4403
    assert message["type"] == "error"
    assert "developer role" in message["message"] and "viewer" in message["message"]
    assert not AuditEntry.objects.filter(action=AuditAction.EXEC_SHELL).exists()


def test_no_access_another_tenants_instance_and_a_stopped_one_are_refused(tenant, developer, running, other_app):
    theirs = other_app.instances.get()
    stopped_app_instance = running
    cookie = session_cookie(developer)

    async def scenario():
        async with Socket(None, exec_path(tenant, running)) as socket:
            anonymous = (await socket.receive())["type"], await socket.close_code()
        async with Socket(cookie, exec_path(tenant, theirs)) as socket:
            other = await socket.close_code()
        await asyncio.to_thread(
            lambda: Instance.objects.filter(pk=stopped_app_instance.pk).update(status=InstanceStatus.STOPPED)
        )
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            stopped = (await socket.receive())["message"], await socket.close_code()
        return anonymous, other, stopped

    anonymous, other, stopped = run(scenario())
    assert anonymous == ("error", 4403)
    assert other == 4404
    assert stopped[1] == 4409 and "stopped" in stopped[0]


def test_a_developer_types_resizes_and_sees_the_exit_and_the_session_is_audited(
    tenant, developer, running, guest_agent
):
    cookie = session_cookie(developer)

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            opened = await socket.receive()
            await socket.communicator.send_json_to({"type": "resize", "rows": 40, "cols": 132})
            await socket.communicator.send_json_to({"type": "input", "data": "echo hi\r"})
            await socket.communicator.send_json_to({"type": "input", "data": "exit 3"})
            messages = await socket.receive_until(lambda m: m["type"] == "exit")
            return opened, messages, await socket.close_code()

    opened, messages, code = run(scenario())
    assert opened["type"] == "opened"
    output = b"".join(binascii.a2b_base64(m["data"]) for m in messages if m["type"] == "output")
    assert output == b"$ echo hi\rexit 3"
    assert messages[-1] == {"type": "exit", "exit_code": 3}
    assert code == 1000
    assert any(line.startswith(b"sh-open ") and b" 30 100 tty" in line for line in guest_agent.requests)
    assert f"sh-resize {opened['session']} 40 132\n".encode() in guest_agent.requests
    entry = AuditEntry.objects.get(action=AuditAction.EXEC_SHELL)
    assert (entry.actor, entry.tenant, entry.target) == (developer, tenant, str(running.pk))
    assert entry.data["session"] == opened["session"] and entry.data["app"] == running.app.marathon_id


def test_a_bad_message_closes_the_shell_with_4400(tenant, developer, running, guest_agent):
    cookie = session_cookie(developer)

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            await socket.receive()
            await socket.communicator.send_to(text_data="not json")
            return await socket.receive(), await socket.close_code()

    message, code = run(scenario())
    assert code == 4400 and message["type"] == "error"


def test_an_api_token_opens_a_shell_for_a_developer_and_not_for_a_viewer(
    tenant, developer, viewer, running, guest_agent
):
    _, developer_key = api_token_create(user=developer, name="cli", tenant=tenant)
    _, viewer_key = api_token_create(user=viewer, name="cli", tenant=tenant)

    async def open_with(key):
        headers = [(b"host", b"127.0.0.2:8000"), (b"authorization", f"Token {key}".encode())]
        from channels.testing import WebsocketCommunicator

        from portal.asgi import application

        communicator = WebsocketCommunicator(application, exec_path(tenant, running), headers=headers)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        first = await communicator.receive_json_from(timeout=10)
        await communicator.disconnect()
        return first

    assert run(open_with(developer_key))["type"] == "opened"
    refused = run(open_with(viewer_key))
    assert refused["type"] == "error" and "developer role" in refused["message"]


def rest_exec(user, tenant, instance_id, body):
    client = APIClient()
    client.force_authenticate(user)
    return client.post(f"/api/v1/tenants/{tenant.slug}/instances/{instance_id}/exec/", body, format="json")


def test_one_shot_exec_over_rest_returns_output_and_exit_code_and_is_audited(tenant, developer, running, guest_agent):
    response = rest_exec(developer, tenant, running.pk, {"command": ["echo", "it's here"], "timeout": 20})

    assert response.status_code == 200, response.content
    assert response.json() == {
        "output": "echo 'it'\"'\"'s here'\n",
        "exit_code": 0,
        "timed_out": False,
        "truncated": False,
    }
    entry = AuditEntry.objects.get(action=AuditAction.EXEC_RUN)
    assert entry.actor == developer and entry.data["command"] == "echo 'it'\"'\"'s here'"


def test_one_shot_exec_refusals(tenant, developer, viewer, running, other_app):
    theirs = other_app.instances.get()
    assert rest_exec(viewer, tenant, running.pk, {"command": ["true"]}).status_code == 403
    assert rest_exec(developer, tenant, theirs.pk, {"command": ["true"]}).status_code == 404
    assert rest_exec(developer, tenant, "not-a-uuid", {"command": ["true"]}).status_code == 404
    assert rest_exec(developer, tenant, running.pk, {"command": []}).status_code == 400
    assert rest_exec(developer, tenant, running.pk, {"command": "true"}).status_code == 400
    assert rest_exec(developer, tenant, running.pk, {"command": ["x" * 5000]}).status_code == 400
    too_long = rest_exec(developer, tenant, running.pk, {"command": ["true"], "timeout": 100000})
    assert too_long.status_code == 400 and "timeout" in too_long.json()
    assert rest_exec(developer, tenant, running.pk, {"command": ["true"], "user": "root"}).status_code == 400
    Instance.objects.filter(pk=running.pk).update(status=InstanceStatus.STOPPED)
    assert rest_exec(developer, tenant, running.pk, {"command": ["true"]}).status_code == 409
    assert not AuditEntry.objects.filter(action=AuditAction.EXEC_RUN).exists()


def test_one_shot_exec_caps_its_time_and_its_output(tenant, developer, running, guest_agent, settings):
    settings.EXEC_MAX_OUTPUT_BYTES = 5
    hung = rest_exec(developer, tenant, running.pk, {"command": ["hang"], "timeout": 1})
    long = rest_exec(developer, tenant, running.pk, {"command": ["echo", "0123456789"]})

    assert hung.json() == {"output": "", "exit_code": None, "timed_out": True, "truncated": False}
    assert long.json() == {"output": "echo ", "exit_code": None, "timed_out": False, "truncated": True}
    assert any(line.startswith(b"sh-close ") for line in guest_agent.requests)  # the hung one was closed


def test_a_developer_made_viewer_loses_the_open_shell(tenant, developer, running, guest_agent):
    cookie = session_cookie(developer)

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            await socket.receive()  # opened
            await asyncio.to_thread(
                lambda: Membership.objects.filter(tenant=tenant, user=developer).update(role=TenantRole.VIEWER)
            )
            messages = await socket.receive_until(lambda m: m["type"] == "error")
            return messages[-1], await socket.close_code()

    message, code = run(scenario())
    assert code == 4403 and "developer role" in message["message"]


def test_a_flood_of_messages_closes_the_shell_with_4429(tenant, developer, running, guest_agent):
    cookie = session_cookie(developer)

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as socket:
            await socket.receive()  # opened
            for _ in range(MESSAGES_BURST + 50):
                await socket.communicator.send_json_to({"type": "ping"})
            messages = await socket.receive_until(lambda m: m["type"] == "error")
            return messages[-1], await socket.close_code()

    message, code = run(scenario())
    assert code == 4429 and "Too many messages" in message["message"]


def test_a_client_that_does_not_read_holds_the_shell_back_and_one_that_acks_gets_everything(
    tenant, developer, running, guest_agent
):
    """Output is acked to the host only as the client acks what it wrote to its terminal: a
    client that never reads leaves at most one window of output in the portal."""
    cookie = session_cookie(developer)
    total = 1024 * 1024

    async def scenario():
        async with Socket(cookie, exec_path(tenant, running)) as stalled:
            await stalled.receive()  # opened
            await stalled.communicator.send_json_to({"type": "input", "data": f"flood {total}"})
            await asyncio.sleep(4)  # it reads nothing, acks nothing (the poll's liveness ack runs)
            held = guest_agent.sent
        async with Socket(cookie, exec_path(tenant, running)) as reader:
            await reader.receive()  # opened
            await reader.communicator.send_json_to({"type": "input", "data": f"flood {total}"})
            written = acked = 0
            for _ in range(total // 4096 + 100):
                message = await reader.receive()
                if message["type"] != "output":
                    break
                written += len(binascii.a2b_base64(message["data"]))
                if written - acked >= 16 * 1024:
                    acked = written
                    await reader.communicator.send_json_to({"type": "ack", "bytes": written})
            return held, message, written

    held, last, written = run(scenario())
    assert held <= SHELL_WINDOW_BYTES + 4096, held
    assert last == {"type": "exit", "exit_code": 0}
    assert written == len(f"$ flood {total}") + total  # the prompt, the echo, then every flood byte


def test_a_one_shot_command_is_ended_at_the_output_cap(tenant, developer, running, guest_agent, settings):
    """`yes` with a small cap: the command is closed when its output passes the cap, and the answer
    comes then with what fitted (not at the timeout, after streaming all the while)."""
    settings.EXEC_MAX_OUTPUT_BYTES = 5
    response = rest_exec(developer, tenant, running.pk, {"command": ["yes"], "timeout": 5})
    for _ in range(100):  # the close reaches the guest just after the answer
        if any(line.startswith(b"sh-close ") for line in guest_agent.requests):
            break
        time.sleep(0.05)

    assert response.json() == {"output": "y\ny\ny", "exit_code": None, "timed_out": False, "truncated": True}
    assert guest_agent.sent <= SHELL_WINDOW_BYTES + 4096, guest_agent.sent
    assert any(line.startswith(b"sh-close ") for line in guest_agent.requests)
