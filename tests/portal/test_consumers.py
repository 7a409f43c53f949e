"""The WebSocket consumers through the real ASGI application (session auth, origin check), the
real Redis channel layer and PostgreSQL; the console side with a real console agent reading a
guest.log in the protocol's format (the VM end to end is in test_console_live.py)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from channels.exceptions import ChannelFull
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal.asgi import application
from portal.choices import HostState, InstanceStatus
from portal.events import event_publish
from portal.marathon import parse_app_definition
from portal.models import Event, Instance
from portal.selectors import EVENT_REPLAY_LIMIT, event_horizon, event_list_after, event_read_limit
from portal.services.apps import app_create
from portal.services.instances import instance_transition
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import Membership
from tests.support.portal_fixtures import compute_host_create
from vmworker.console_agent import ConsoleAgent, console_channel, console_group

pytestmark = pytest.mark.django_db(transaction=True)
RECEIVE_TIMEOUT_S = 10
HEAD = b"init 10\nstarted 12\n"


def run(scenario):
    """Runs a coroutine; the consumers' database threads give their connections back after."""

    async def wrapped():
        try:
            return await scenario
        finally:
            await asyncio.to_thread(connections.close_all)

    return asyncio.run(wrapped())


def session_cookie(user) -> bytes | None:
    """The session cookie of a logged-in browser of ``user`` (None: anonymous)."""
    if user is None:
        return None
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


class Socket:
    """A WebSocket client of the real ASGI app, as a browser on a page of the portal at its
    public URL (the settings' default, http://127.0.0.2:8000) would open it (``origin`` another page's)."""

    def __init__(self, cookie: bytes | None, path: str, origin: bytes | None = b"http://127.0.0.2:8000"):
        headers = [(b"host", b"127.0.0.2:8000")]
        if origin is not None:
            headers.append((b"origin", origin))
        if cookie is not None:
            headers.append((b"cookie", cookie))
        self.communicator = WebsocketCommunicator(application, path, headers=headers)

    async def __aenter__(self):
        connected, _ = await self.communicator.connect(timeout=RECEIVE_TIMEOUT_S)
        assert connected
        return self

    async def handshake_refused(self) -> bool:
        """True when the socket was closed before accept (the server answers the handshake 403)."""
        connected, _ = await self.communicator.connect(timeout=RECEIVE_TIMEOUT_S)
        if connected:
            await self.communicator.disconnect()
            return False
        await self.communicator.wait(timeout=RECEIVE_TIMEOUT_S)
        return True

    async def __aexit__(self, *exc):
        await self.communicator.disconnect()

    async def receive(self) -> dict:
        return await self.communicator.receive_json_from(timeout=RECEIVE_TIMEOUT_S)

    async def close_code(self) -> int:
        output = await self.communicator.receive_output(timeout=RECEIVE_TIMEOUT_S)
        assert output["type"] == "websocket.close", output
        return output["code"]

    async def receive_until(self, predicate, limit: int = 100) -> list[dict]:
        messages = []
        for _ in range(limit):
            messages.append(await self.receive())
            if predicate(messages[-1]):
                return messages
        raise AssertionError(f"not received: {messages}")

    async def nothing_more(self) -> bool:
        return await self.communicator.receive_nothing(timeout=0.5)


def make_app(access, app_id: str = "/web"):
    body = {
        "id": app_id,
        "cmd": "sleep 3600",
        "cpus": 0.1,
        "mem": 64,
        "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": "demo/hello:latest"}},
        # Never placed on a real host another test of the session may run: these tests set the row.
        "constraints": [["hostname", "CLUSTER", "no-host-runs-this"]],
    }
    return app_create(access=access, definition=parse_app_definition(body)).app


@pytest.fixture
def viewer(tenant, member_of):
    return member_of(tenant, TenantRole.VIEWER)


@pytest.fixture
def app(tenant, member_of):
    owner = member_of(tenant, TenantRole.OWNER)
    return make_app(tenant_access_resolve(user=owner, slug=tenant.slug))


@pytest.fixture
def other_app(other_tenant, member_of):
    owner = member_of(other_tenant, TenantRole.OWNER)
    return make_app(tenant_access_resolve(user=owner, slug=other_tenant.slug), "/theirs")


@pytest.fixture
def host():
    """A host row only these tests use: down, so placement never picks it and its heartbeat never
    expires (which would make its instances lost); the consumers look at the instance's row."""
    return compute_host_create(f"test-consumers-{uuid.uuid4().hex[:8]}", state=HostState.DOWN, vcpus=4, memory_mib=8192)


@pytest.fixture
def instance(app, host):
    instance = app.instances.get()
    Instance.objects.filter(pk=instance.pk).update(host=host)
    return instance


@pytest.fixture
def host_logs(tmp_path) -> Path:
    return tmp_path


def start_agent(host, host_logs, **options) -> ConsoleAgent:
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    agent = ConsoleAgent(
        host_name=host.name,
        instances_dir=host_logs,
        layer_factory=lambda: channel_layers.make_backend(DEFAULT_CHANNEL_LAYER),
        **options,
    )
    agent.start()
    return agent


@pytest.fixture
def agent(host, host_logs):
    agent = start_agent(host, host_logs, scan_s=0.05)
    yield agent
    agent.stop()


@pytest.fixture
def backlog_only_agent(host, host_logs):
    """An agent that answers backlog requests but never tails on its own (it did one empty tick)."""
    agent = start_agent(host, host_logs, poll_s=3600)
    yield agent
    agent.stop()


def guest_log(host_logs: Path, instance) -> Path:
    directory = host_logs / str(instance.pk)
    directory.mkdir(exist_ok=True)
    log = directory / "guest.log"
    if not log.exists():
        log.write_bytes(HEAD)
    return log


def append(log: Path, *records: str) -> None:
    with open(log, "ab") as file:
        file.write("".join(f"{record}\n" for record in records).encode())


def set_status(instance, status: str, **fields) -> None:
    Instance.objects.filter(pk=instance.pk).update(status=status, **fields)


def record(tenant, app=None, kind="status_update_event", **data) -> Event:
    return Event.objects.create(tenant=tenant, app=app, kind=kind, data=data)


def lines_of(messages: list[dict]) -> list[int]:
    return [line["seq"] for message in messages if message["type"] == "lines" for line in message["lines"]]


@contextmanager
def row_in_flight(tenant):
    """An event row of ``tenant`` inserted by another connection whose transaction stays open until
    the block ends (then it commits); yields a list that holds the row's id."""
    inserted, release, done = threading.Event(), threading.Event(), threading.Event()
    slow_ids = []

    def slow_transaction():
        try:
            with transaction.atomic():
                slow_ids.append(record(tenant, taskId="slow").pk)
                inserted.set()
                release.wait(10)
        finally:
            connections.close_all()
            done.set()

    threading.Thread(target=slow_transaction).start()
    assert inserted.wait(10)
    try:
        yield slow_ids
    finally:
        release.set()
        assert done.wait(10)


# -- authorization ---------------------------------------------------------------------------------


def test_refused_sockets_are_closed_with_4403_and_get_nothing(tenant, other_tenant, member_of, app, instance):
    stranger = member_of(other_tenant, TenantRole.OWNER)
    paths = [
        f"/ws/t/{tenant.slug}/",
        f"/ws/t/{tenant.slug}/apps/{app.pk}/",
        f"/ws/t/{tenant.slug}/instances/{instance.pk}/console/",
    ]

    cookies = [session_cookie(None), session_cookie(stranger)]

    async def scenario():
        codes = []
        for cookie in cookies:
            for path in paths:
                async with Socket(cookie, path) as socket:
                    codes.append(await socket.close_code())
                    assert await socket.nothing_more()
        return codes

    assert run(scenario()) == [4403] * 6


def test_ids_of_another_tenant_or_unknown_ids_are_not_found(tenant, viewer, other_app, app):
    theirs = other_app.instances.get()
    paths = [
        f"/ws/t/{tenant.slug}/apps/{other_app.pk}/",
        f"/ws/t/{tenant.slug}/apps/999999/",
        f"/ws/t/{tenant.slug}/instances/{theirs.pk}/console/",
        f"/ws/t/{tenant.slug}/instances/{uuid.uuid4()}/console/",
    ]

    cookie = session_cookie(viewer)

    async def scenario():
        codes = []
        for path in paths:
            async with Socket(cookie, path) as socket:
                codes.append(await socket.close_code())
                assert await socket.nothing_more()
        return codes

    assert run(scenario()) == [4404] * 4


def test_another_tenants_slug_is_refused_even_for_its_own_app(tenant, other_tenant, viewer, other_app):
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{other_tenant.slug}/apps/{other_app.pk}/") as socket:
            return await socket.close_code(), await socket.nothing_more()

    assert run(scenario()) == (4403, True)


@pytest.mark.parametrize(
    "origin",
    [
        b"http://127.0.0.1:20001",  # a tenant's published app
        b"http://127.0.0.2:20001",  # the portal's host, another port
        b"https://127.0.0.2:8000",  # another scheme
        b"http://localhost:8000",  # another host name of the same machine
        b"null",
        None,  # no Origin, with the session cookie
    ],
)
def test_a_session_socket_from_another_origin_is_refused_before_accept(tenant, viewer, origin):
    cookie = session_cookie(viewer)
    assert run(Socket(cookie, f"/ws/t/{tenant.slug}/", origin=origin).handshake_refused())


def test_a_trusted_origin_is_accepted(tenant, viewer, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://portal.example.test"]
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/", origin=b"https://portal.example.test") as socket:
            return await socket.nothing_more()

    assert run(scenario())


def test_sockets_over_the_users_stream_cap_are_closed_with_4429_until_one_closes(tenant, viewer, settings):
    settings.MAX_STREAMS_PER_USER = 2
    cookie = session_cookie(viewer)
    path = f"/ws/t/{tenant.slug}/"

    async def scenario():
        first, second, third = Socket(cookie, path), Socket(cookie, path), Socket(cookie, path)
        await first.__aenter__()
        await second.__aenter__()
        await third.__aenter__()
        refused = await third.communicator.receive_output(timeout=RECEIVE_TIMEOUT_S)
        assert await first.nothing_more() and await second.nothing_more()
        await third.__aexit__(None, None, None)
        await first.__aexit__(None, None, None)  # its lease is released on disconnect
        async with Socket(cookie, path) as again:
            allowed = await again.nothing_more()
        await second.__aexit__(None, None, None)
        return refused, allowed

    refused, allowed = run(scenario())
    assert (refused["type"], refused["code"]) == ("websocket.close", 4429)
    assert "at most 2 open streams" in refused["reason"]
    assert allowed


# -- event streams ---------------------------------------------------------------------------------


def test_replay_after_an_id_then_live_events_once_each(tenant, other_tenant, viewer, app):
    first = record(tenant, app, taskId="a")
    second = record(tenant, app, taskId="b")
    record(other_tenant, taskId="not yours")
    third = record(tenant, None, kind="deployment_success", id="d1")

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/?after={first.pk}") as tenant_socket:
            replayed = [await tenant_socket.receive(), await tenant_socket.receive()]
            live = await asyncio.to_thread(
                lambda: event_publish(tenant=tenant, app=app, kind="status_update_event", data={"taskId": "c"})
            )
            received = await tenant_socket.receive()
            assert await tenant_socket.nothing_more()
        async with Socket(cookie, f"/ws/t/{tenant.slug}/apps/{app.pk}/?after={first.pk}") as app_socket:
            app_replay = [await app_socket.receive() for _ in range(2)]
            assert await app_socket.nothing_more()
        return replayed, live, received, app_replay

    replayed, live, received, app_replay = run(scenario())
    assert [m["id"] for m in replayed] == [second.pk, third.pk]
    assert replayed[0] == {
        "type": "event",
        "id": second.pk,
        "kind": "status_update_event",
        "app_id": app.pk,
        "instance_id": None,
        "data": {"taskId": "b"},
    }
    assert received["id"] == live.pk and received["data"]["taskId"] == "c"
    assert [m["id"] for m in app_replay] == [second.pk, live.pk]  # the app's rows only


def test_without_after_only_new_events_come(tenant, viewer):
    record(tenant, taskId="old")

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/") as socket:
            assert await socket.nothing_more()
            await asyncio.to_thread(lambda: event_publish(tenant=tenant, kind="app_terminated_event", data={}))
            return await socket.receive()

    assert run(scenario())["kind"] == "app_terminated_event"


def test_a_socket_idle_longer_than_the_redis_read_timeout_still_gets_events(tenant, viewer):
    """redis-py 8's default 5 s read timeout used to end every idle consumer (channels_redis#422)."""
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/") as socket:
            await asyncio.sleep(7)  # idle past the 5 s default, with the consumer blocked in receive()
            await asyncio.to_thread(lambda: event_publish(tenant=tenant, kind="app_terminated_event", data={}))
            return await socket.receive()

    assert run(scenario())["kind"] == "app_terminated_event"


def test_an_event_whose_live_message_was_lost_still_arrives(tenant, viewer):
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/") as socket:
            quiet = await socket.nothing_more()
            row = await asyncio.to_thread(record, tenant, taskId="no group_send")  # the row only
            return quiet, row, await socket.receive()

    quiet, row, received = run(scenario())
    assert quiet and received["id"] == row.pk


def test_too_many_to_replay_is_a_reset(tenant, viewer):
    Event.objects.bulk_create(Event(tenant=tenant, kind="x", data={}) for _ in range(EVENT_REPLAY_LIMIT + 1))

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, f"/ws/t/{tenant.slug}/?after=0") as socket:
            return await socket.receive(), await socket.nothing_more()

    assert run(scenario()) == ({"type": "reset"}, True)


def test_a_row_committed_after_a_newer_one_is_not_skipped(tenant):
    before = record(tenant, taskId="before")
    with row_in_flight(tenant) as slow_ids:
        fast = record(tenant, taskId="fast")  # a newer id, committed first
        assert slow_ids[0] < fast.pk
        assert event_list_after(tenant=tenant, after_id=before.pk) == []
    assert [e.pk for e in event_list_after(tenant=tenant, after_id=before.pk)] == [slow_ids[0], fast.pk]


def test_a_hole_left_by_a_rollback_stops_readers_only_for_the_grace(tenant):
    before = record(tenant, taskId="before")
    with pytest.raises(RuntimeError), transaction.atomic():
        record(tenant, taskId="rolled back")
        raise RuntimeError
    after = record(tenant, taskId="after")
    assert event_horizon() == before.pk
    Event.objects.filter(pk=after.pk).update(created_at=timezone.now() - timedelta(seconds=60))
    assert event_horizon() is None
    assert [e.pk for e in event_list_after(tenant=tenant, after_id=before.pk)] == [after.pk]


# -- console ---------------------------------------------------------------------------------------


def console_path(tenant, instance, after: int | None = None) -> str:
    return f"/ws/t/{tenant.slug}/instances/{instance.pk}/console/" + (f"?after={after}" if after is not None else "")


def test_console_backlog_then_live_then_resume_without_duplicates_then_exit(tenant, viewer, instance, agent, host_logs):
    set_status(instance, InstanceStatus.RUNNING)
    log = guest_log(host_logs, instance)
    append(log, "out zero", "err one", "out two")

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            first = await socket.receive_until(lambda m: m.get("state") == "live")
            append(log, "out three", "out four")
            live = await socket.receive_until(lambda m: 4 in lines_of([m]))
        append(log, "out five")
        async with Socket(cookie, console_path(tenant, instance, after=3)) as socket:
            resumed = await socket.receive_until(lambda m: m.get("state") == "live")
            append(log, "out six", "exit 0")
            end = await socket.receive_until(lambda m: m.get("state") == "exited")
            assert await socket.nothing_more()
        return first, live, resumed, end

    first, live, resumed, end = run(scenario())
    assert first[0] == {
        "type": "lines",
        "lines": [
            {"seq": 0, "stream": "stdout", "text": "zero"},
            {"seq": 1, "stream": "stderr", "text": "one"},
            {"seq": 2, "stream": "stdout", "text": "two"},
        ],
    }
    assert first[-1] == {"type": "status", "state": "live", "exit_code": None, "message": ""}
    assert lines_of(live) == [3, 4]
    assert lines_of(resumed) == [4, 5]
    assert lines_of(end) == [6] and end[-1]["exit_code"] == 0


def test_a_lost_live_batch_is_fetched_again_from_the_host(tenant, viewer, instance, backlog_only_agent, host_logs):
    set_status(instance, InstanceStatus.RUNNING)
    log = guest_log(host_logs, instance)
    append(log, "out zero", "out one", "out two")
    cookie = session_cookie(viewer)

    async def scenario():
        from channels.layers import get_channel_layer

        async with Socket(cookie, console_path(tenant, instance)) as socket:
            first = await socket.receive_until(lambda m: m.get("state") == "live")
            append(log, "out three", "out four")
            # Only the batch with line 4 arrives, as if the one with line 3 was dropped by Redis.
            batch = {"seq": 4, "stream": "stdout", "text": "four"}
            message = {"type": "console.lines", "instance_id": str(instance.pk), "lines": [batch]}
            await get_channel_layer().group_send(console_group(instance.pk), message)
            after_gap = await socket.receive_until(lambda m: 4 in lines_of([m]))
            return first, after_gap, await socket.nothing_more()

    first, after_gap, quiet = run(scenario())
    assert lines_of(first) == [0, 1, 2]
    assert after_gap == [
        {
            "type": "lines",
            "lines": [{"seq": 3, "stream": "stdout", "text": "three"}, {"seq": 4, "stream": "stdout", "text": "four"}],
        }
    ]
    assert quiet


def test_console_waits_for_the_instance_to_run(tenant, viewer, instance, agent, host_logs):
    log = guest_log(host_logs, instance)
    append(log, "out early")

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            waiting = await socket.receive()
            for status in (InstanceStatus.PULLING, InstanceStatus.BOOTING, InstanceStatus.RUNNING):
                await asyncio.to_thread(instance_transition, instance_id=instance.pk, to=status)
            started = await socket.receive_until(lambda m: m.get("state") == "live")
            return waiting, started

    waiting, started = run(scenario())
    assert waiting["type"] == "status" and waiting["state"] == "waiting"
    assert lines_of(started) == [0] and started[0]["lines"][0]["text"] == "early"


def test_console_of_an_ended_instance_whose_host_does_not_answer_is_gone_with_the_reason(tenant, viewer, instance):
    set_status(instance, InstanceStatus.FAILED, failure_reason="the app did not start", console_tail="panic: x")

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            return await socket.receive(), await socket.nothing_more()

    status, quiet = run(scenario())
    assert status["type"] == "status" and status["state"] == "gone"
    assert "the app did not start" in status["message"] and "panic: x" in status["message"]
    assert quiet


def test_console_truncates_a_long_backlog(tenant, viewer, instance, agent, host_logs):
    set_status(instance, InstanceStatus.RUNNING)
    log = guest_log(host_logs, instance)
    append(log, *(f"out n{i}" for i in range(1200)))

    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            return await socket.receive_until(lambda m: m.get("state") == "live")

    messages = run(scenario())
    assert messages[0] == {"type": "truncated", "first_seq": 200}
    assert lines_of(messages) == list(range(200, 1200))


def test_a_host_that_does_not_answer_makes_the_console_unavailable_until_it_does(
    tenant, viewer, instance, host, host_logs
):
    set_status(instance, InstanceStatus.RUNNING)
    append(guest_log(host_logs, instance), "out zero", "out one")
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            unavailable = await socket.receive()
            agent = await asyncio.to_thread(start_agent, host, host_logs)  # the host answers again
            try:
                recovered = await socket.receive_until(lambda m: m.get("state") == "live")
            finally:
                await asyncio.to_thread(agent.stop)
        return unavailable, recovered

    unavailable, recovered = run(scenario())
    assert unavailable["type"] == "status" and unavailable["state"] == "unavailable"
    assert "retrying" in unavailable["message"]
    assert lines_of(recovered) == [0, 1]


def test_a_seq_gap_while_the_hosts_request_channel_is_full_waits_for_the_host(
    tenant, viewer, instance, host, host_logs
):
    set_status(instance, InstanceStatus.RUNNING)
    log = guest_log(host_logs, instance)
    append(log, "out zero")
    agent = start_agent(host, host_logs, poll_s=3600)
    cookie = session_cookie(viewer)

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            first = await socket.receive_until(lambda m: m.get("state") == "live")
            await asyncio.to_thread(agent.stop)
            stale = {"type": "console.backlog.request", "instance_id": str(instance.pk), "sent_at": 0}
            for _ in range(1000):  # the stopped host's channel fills up (channels_redis capacity: 100)
                try:
                    await layer.send(console_channel(host.name), stale | {"reply_to": "nobody"})
                except ChannelFull:
                    break
            append(log, "out one", "out two")
            gap = {
                "type": "console.lines",
                "instance_id": str(instance.pk),
                "lines": [{"seq": 2, "stream": "stdout", "text": "two"}],
            }
            await layer.group_send(console_group(instance.pk), gap)
            unavailable = await socket.receive()
            restarted = await asyncio.to_thread(start_agent, host, host_logs, poll_s=3600)
            try:
                recovered = await socket.receive_until(lambda m: m.get("state") == "live")
            finally:
                await asyncio.to_thread(restarted.stop)
        return first, unavailable, recovered

    first, unavailable, recovered = run(scenario())
    assert lines_of(first) == [0]
    assert unavailable["type"] == "status" and unavailable["state"] == "unavailable"
    assert lines_of(recovered) == [1, 2]


def test_a_waiting_console_starts_when_its_lines_come_even_without_a_status_message(
    tenant, viewer, instance, agent, host_logs
):
    set_status(instance, InstanceStatus.BOOTING)
    log = guest_log(host_logs, instance)
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            waiting = await socket.receive()
            # The row changes without a portal event (as if its message was lost), and lines come.
            await asyncio.to_thread(set_status, instance, InstanceStatus.RUNNING)
            await asyncio.to_thread(append, log, "out booted")
            return waiting, await socket.receive_until(lambda m: m.get("state") == "live")

    waiting, started = run(scenario())
    assert waiting["state"] == "waiting"
    assert lines_of(started) == [0] and started[0]["lines"][0]["text"] == "booted"


def test_a_waiting_console_reads_the_row_again_when_the_status_message_was_lost(
    tenant, viewer, instance, agent, host_logs
):
    set_status(instance, InstanceStatus.BOOTING)
    append(guest_log(host_logs, instance), "out early")
    cookie = session_cookie(viewer)

    async def scenario():
        async with Socket(cookie, console_path(tenant, instance)) as socket:
            waiting = await socket.receive()
            await asyncio.to_thread(set_status, instance, InstanceStatus.RUNNING)  # no event, no new line
            return waiting, await socket.receive_until(lambda m: m.get("state") == "live")

    waiting, started = run(scenario())
    assert waiting["state"] == "waiting" and lines_of(started) == [0]


@pytest.mark.parametrize("how", ["removed from the tenant", "logged out", "deactivated"])
def test_a_socket_whose_user_lost_access_is_closed_within_the_poll(tenant, viewer, instance, how):
    cookie = session_cookie(viewer)
    paths = [f"/ws/t/{tenant.slug}/", console_path(tenant, instance)]  # the console is waiting: instance staged

    def lose_access():
        if how == "removed from the tenant":
            Membership.objects.filter(tenant=tenant, user=viewer).delete()
        elif how == "logged out":
            Session.objects.filter(session_key=cookie.decode().partition("=")[2]).delete()
        else:
            type(viewer).objects.filter(pk=viewer.pk).update(is_active=False)

    async def scenario():
        sockets = [Socket(cookie, path) for path in paths]
        for socket in sockets:
            await socket.__aenter__()
        assert (await sockets[1].receive())["state"] == "waiting"
        assert await sockets[0].nothing_more()
        await asyncio.to_thread(lose_access)
        codes = [await socket.close_code() for socket in sockets]
        for socket in sockets:
            await socket.__aexit__(None, None, None)
        return codes

    assert run(scenario()) == [4403, 4403]


def test_sockets_share_the_event_horizon_for_a_moment_but_never_pass_a_row_in_flight(tenant):
    before = record(tenant, taskId="before")
    with row_in_flight(tenant) as slow_ids:
        fast = record(tenant, taskId="fast")
        in_flight = event_read_limit()  # read now (and kept for the readers that follow)
    assert in_flight == before.pk  # stops before the row in flight
    with CaptureQueriesContext(connection) as queries:
        cached = event_read_limit(max_age_s=60)
        listed = event_list_after(tenant=tenant, after_id=before.pk, horizon_max_age_s=60)
    assert (cached, listed, len(queries)) == (before.pk, [], 1)  # the horizon scan is shared: only the list query
    refreshed = event_list_after(tenant=tenant, after_id=before.pk, horizon_max_age_s=60, at_least=fast.pk)
    assert [e.pk for e in refreshed] == [slow_ids[0], fast.pk]  # a live message's id refreshes it
