"""The console agent against the real Redis channel layer: live batches to the instance's
console group, backlog answers on the host channel, the exit after the lines, a clean stop."""

import asyncio
import os
import time
import uuid

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from vmworker.console_agent import ConsoleAgent, console_channel, console_group

RECEIVE_TIMEOUT_S = 10


def redis_layer() -> RedisChannelLayer:
    """The test settings' layer (the project's Redis, the tests' database, its password)."""
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


@pytest.fixture
def agent(tmp_path):
    host = f"test-console-{uuid.uuid4().hex[:8]}"
    agent = ConsoleAgent(host_name=host, instances_dir=tmp_path, layer_factory=redis_layer, scan_s=0.05)
    agent.start()
    yield agent
    agent.stop()
    assert not agent._thread.is_alive()


def instance_log(instances_dir, instance_id) -> "os.PathLike":
    directory = instances_dir / instance_id
    directory.mkdir()
    log = directory / "guest.log"
    log.write_bytes(b"init 10\nstarted 12\nout before the client\n")
    return log


def append(log, data: bytes) -> None:
    with open(log, "ab") as file:
        file.write(data)


async def receive_until(layer, channel, wanted_type, seen):
    while True:
        message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S)
        seen.append(message)
        if message["type"] == wanted_type:
            return message


def test_live_lines_backlog_and_exit(agent, tmp_path):
    instance_id = str(uuid.uuid4())
    log = instance_log(tmp_path, instance_id)

    async def scenario():
        client = redis_layer()
        channel = await client.new_channel()
        await client.group_add(console_group(instance_id), channel)
        request = {"type": "console.backlog.request", "instance_id": instance_id, "after": -1}
        await client.send(agent.channel, request | {"reply_to": channel, "sent_at": time.time()})
        seen = []
        backlog = await receive_until(client, channel, "console.backlog", seen)
        append(log, b"out live one\nerr live two\n")
        live = []
        while sum(len(m["lines"]) for m in live if m["type"] == "console.lines") < 2 or not live:
            live.append(await asyncio.wait_for(client.receive(channel), RECEIVE_TIMEOUT_S))
        append(log, b"out last\nexit 7\n")
        await receive_until(client, channel, "console.exit", live)
        await client.send(agent.channel, request | {"after": 1, "reply_to": channel, "sent_at": time.time()})
        resumed = await receive_until(client, channel, "console.backlog", [])
        await client.group_discard(console_group(instance_id), channel)
        await client.close_pools()
        return seen, backlog, live, resumed

    seen, backlog, live, resumed = asyncio.run(scenario())
    assert backlog["found"] is True
    assert backlog["lines"] == [{"seq": 0, "stream": "stdout", "text": "before the client"}]
    assert backlog["truncated_first_seq"] is None and backlog["exit_code"] is None
    published = [line for m in seen + live if m["type"] == "console.lines" for line in m["lines"]]
    # Line 0 may also go out live, around the backlog that has it (the consumer drops it by seq).
    assert [line for line in published if line["seq"] == 0] in ([], [backlog["lines"][0]])
    assert [line for line in published if line["seq"] > 0] == [
        {"seq": 1, "stream": "stdout", "text": "live one"},
        {"seq": 2, "stream": "stderr", "text": "live two"},
        {"seq": 3, "stream": "stdout", "text": "last"},
    ]
    assert live[-1] == {"type": "console.exit", "instance_id": instance_id, "exit_code": 7}
    assert [line["seq"] for line in resumed["lines"]] == [2, 3] and resumed["exit_code"] == 7


def test_unknown_instance_and_stale_requests(agent):
    async def scenario():
        client = redis_layer()
        channel = await client.new_channel()
        stale = {"type": "console.backlog.request", "instance_id": str(uuid.uuid4()), "after": -1}
        await client.send(agent.channel, stale | {"reply_to": channel, "sent_at": time.time() - 60})
        unknown_id = str(uuid.uuid4())
        fresh = {"instance_id": unknown_id, "reply_to": channel, "sent_at": time.time()}
        await client.send(agent.channel, stale | fresh)
        reply = await asyncio.wait_for(client.receive(channel), RECEIVE_TIMEOUT_S)
        await client.close_pools()
        return unknown_id, reply

    unknown_id, reply = asyncio.run(scenario())
    assert reply == {"type": "console.backlog", "instance_id": unknown_id, "found": False}


def test_channel_and_group_names_are_valid_for_any_host_name():
    layer = redis_layer()
    layer.require_valid_channel_name(console_channel("rack 7/host:α" * 10))  # raises when invalid
    layer.require_valid_group_name(console_group(uuid.uuid4()))


def test_hostile_log_bytes_go_out_as_bounded_lines_and_only_a_well_formed_exit_counts(agent, tmp_path):
    instance_id = str(uuid.uuid4())
    log = instance_log(tmp_path, instance_id)
    append(log, b"out " + b"w" * (2 * 1024 * 1024) + b"\n")  # a 2 MiB record: dropped whole
    append(log, b"out nul \x00 and \xff\xfe bytes\nexit A\nexit 4096\noom 2\n\x00\x00 no tag\n")  # forged: ignored
    append(log, b"out+ " + b"v" * 4000 + b"\nout after\nexit 9\n")

    async def scenario():
        client = redis_layer()
        channel = await client.new_channel()
        request = {"type": "console.backlog.request", "instance_id": instance_id, "after": -1}
        await client.send(agent.channel, request | {"reply_to": channel, "sent_at": time.time()})
        backlog = await receive_until(client, channel, "console.backlog", [])
        await client.close_pools()
        return backlog

    backlog = asyncio.run(scenario())
    # Line 0 is more than a backlog's bytes back (behind the 2 MiB record): it says where it starts.
    assert backlog["truncated_first_seq"] == 1
    assert backlog["lines"] == [
        {"seq": 1, "stream": "stdout", "text": "nul \x00 and \ufffd\ufffd bytes"},
        {"seq": 2, "stream": "stdout", "text": "v" * 4000 + "after"},
    ]
    assert backlog["exit_code"] == 9
