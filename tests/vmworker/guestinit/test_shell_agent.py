"""The exec agent (vmworker.exec_agent) against a real guest and the real Redis channel layer: a
session opened, typed into and ended through Channels messages, output acked end to end, and the
runtime's own control traffic (an exec check, then stop) relayed while the shell is open.
(Here, not in tests/vmworker/, for the guest boot fixtures of this folder.)"""

from __future__ import annotations

import asyncio
import binascii
import socket
import time
import uuid

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from tests.support.guest_qemu import ROOTFS_SERIAL
from vmworker.control_relay import relay_socket_path
from vmworker.exec_agent import ExecAgent
from vmworker.guestinit import GuestConfig
from vmworker.guestinit.protocol import exec_request, parse_exec_result

pytestmark = pytest.mark.vm
RECEIVE_TIMEOUT_S = 30

APP = GuestConfig(
    hostname="hvm-agent",
    argv=("/bin/sh", "-c", "echo ready; trap 'echo got-term; exit 0' TERM; while true; do sleep 0.2; done"),
    env=("PATH=/bin",),
    working_dir="",
    user="",
    rootfs_serial=ROOTFS_SERIAL,
    rootfs_type="erofs",
    overlay_size_mib=16,
    stop_grace_s=5,
)


def redis_layer() -> RedisChannelLayer:
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


def relay_request(path, line: bytes, *, wait_for: bytes | None) -> bytes:
    """What the runtime does: connect to the relay, send one line, read the answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(RECEIVE_TIMEOUT_S)
        client.connect(str(path))
        client.sendall(line)
        received = b""
        while wait_for is not None and wait_for not in received:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
        return received


def test_a_session_through_channels_with_stop_and_checks_relayed(boot_guest, erofs_rootfs, tmp_path):
    control_socket = tmp_path / "control.sock"
    agent = ExecAgent(
        host_name=f"test-exec-{uuid.uuid4().hex[:8]}",
        control_socket=lambda instance_id: control_socket,
        layer_factory=redis_layer,
    )
    agent.start()
    seen = {}

    async def scenario(guest):
        client = redis_layer()
        reply_to = await client.new_channel()
        session = uuid.uuid4().hex
        base = {"session": session}

        async def receive(kind):
            while True:
                message = await asyncio.wait_for(client.receive(reply_to), RECEIVE_TIMEOUT_S)
                if message["type"] == "exec.output":
                    seen.setdefault("output", bytearray()).extend(binascii.a2b_base64(message["data"]))
                    seen.setdefault("offsets", []).append(message["offset"])
                    await client.send(agent.channel, base | {"type": "exec.ack", "offset": len(seen["output"])})
                if message["type"] in (kind, "exec.error", "exec.exit"):
                    return message

        async def type_text(text):
            data = binascii.b2a_base64(text.encode(), newline=False).decode()
            await client.send(agent.channel, base | {"type": "exec.input", "data": data})

        async def wait_text(text):
            while text not in bytes(seen.get("output", b"")).decode(errors="replace"):
                message = await receive("exec.output")
                assert message["type"] == "exec.output", message

        open_request = {"type": "exec.open", "instance_id": str(uuid.uuid4()), "tenant": "t", "reply_to": reply_to}
        await client.send(agent.channel, base | open_request | {"rows": 24, "cols": 80, "sent_at": time.time()})
        seen["opened"] = await receive("exec.opened")
        await type_text("echo host=$HOSTNAME; head -c 300000 /dev/zero | tr '\\0' y | wc -c\r")
        await wait_text("host=hvm-agent")
        await wait_text("300000")
        # The runtime's exec check goes through the relay while the shell holds the port.
        relay = relay_socket_path(control_socket)
        seen["check"] = relay_request(relay, exec_request("chk", "exit 4", 10), wait_for=b"exec-result chk")
        await client.send(agent.channel, base | {"type": "exec.resize", "rows": 50, "cols": 100})
        await type_text("stty size\r")
        await wait_text("50 100")
        # So does its stop: the app gets SIGTERM, the VM powers off, the shell's session ends.
        relay_request(relay, b"stop\n", wait_for=None)
        seen["end"] = await receive("exec.exit")
        await client.close_pools()

    def interact(guest):
        guest.wait_for_stdout("ready")
        asyncio.run(scenario(guest))

    try:
        result = boot_guest(APP, rootfs=erofs_rootfs, interact=interact)
    finally:
        agent.stop()
    assert seen["opened"]["type"] == "exec.opened"
    offsets = seen["offsets"]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert b"300000" in seen["output"]
    results = [parse_exec_result(line) for line in seen["check"].split(b"\n")]
    assert any(r is not None and r.request_id == "chk" and r.exit_code == 4 for r in results)
    assert seen["end"]["type"] == "exec.error"  # the VM went away under the shell
    assert "got-term" in result.stdout_lines  # the stop reached the app through the relay
    assert not agent.sessions and not agent.controls
    assert not relay_socket_path(control_socket).exists()
