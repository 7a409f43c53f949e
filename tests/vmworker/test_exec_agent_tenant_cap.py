"""The exec agent caps the shells and one-shot commands one tenant has open on a host
(``max_sessions_per_tenant``, EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST): a tenant at its cap, even
spread over several instances, is refused with a message naming the setting, and another
tenant's shells on the same host still open. Real Redis layer, fake guests on unix sockets."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.vmworker.test_exec_agent_hostile_guest import drain, make_agent, open_session, redis_layer, start_guest

QUIET_S = 1.0


@pytest.mark.timeout(60)
def test_one_tenant_at_its_cap_is_refused_and_another_tenants_shell_still_opens(tmp_path):
    def opened(session_id):
        return f"sh-opened {session_id}\n".encode()  # and the shell runs on (a `sleep 300`)

    async def scenario():
        ours = [str(uuid.uuid4()), str(uuid.uuid4())]
        theirs = str(uuid.uuid4())
        sockets = {instance: tmp_path / f"{index}.sock" for index, instance in enumerate([*ours, theirs])}
        servers = [(await start_guest(path, opened))[0] for path in sockets.values()]
        agent = make_agent(sockets)
        agent.max_sessions_per_tenant = 3
        client = redis_layer()
        first = []
        for index in range(3):  # at the cap, over two instances
            _, reply_to = await open_session(agent, client, ours[index % 2], tenant="greedy")
            first.append((await drain(client, reply_to, until_quiet_s=QUIET_S))[0]["type"])
        _, reply_to = await open_session(agent, client, ours[1], tenant="greedy")
        over = await drain(client, reply_to, until_quiet_s=QUIET_S)
        _, reply_to = await open_session(agent, client, theirs, tenant="other")
        other = await drain(client, reply_to, until_quiet_s=QUIET_S)
        count = len(agent.sessions)
        for control in list(agent.controls.values()):
            await control.close()
        for server in servers:
            server.close()
        await client.close_pools()
        await agent.layer.close_pools()
        return first, over, other, count

    first, over, other, count = asyncio.run(scenario())
    assert first == ["exec.opened"] * 3
    assert over and over[0]["type"] == "exec.error", over
    assert "EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST" in over[0]["message"] and "3" in over[0]["message"]
    assert other[0]["type"] == "exec.opened"
    assert count == 4
