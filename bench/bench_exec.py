"""Benchmark of issue 13's exec: shells in a real guest (plain QEMU, TCG), through the host's exec
agent and the project's Redis channel layer, with the messages the portal's consumer sends.

Not a test: prints figures. Boots one busybox guest (tests/support/guest_qemu), starts an
ExecAgent in this process pointed at its control socket, and measures from a Channels client
(what portal.consumers.ExecConsumer is to the agent; the browser's WebSocket hop is not in it):

    open_ms       exec.open -> exec.opened (a tty shell forked in the guest), then exit
    echo_ms       one typed character (exec.input) -> its echo (exec.output), in an open shell
    one_shot_ms   exec.open of a run-mode ``true`` -> exec.exit (what REST exec waits for)
    bulk_mib_s    ``head -c <N> /dev/zero`` in run mode, output acked every 16 KiB as the
                  consumer does: MiB/s received by the client
    bulk_tty_mib_s  ``head -c <N> /dev/zero | tr '\\0' x`` on a terminal (tty mode), as in a shell
    bulk_direct_mib_s  the run-mode bulk on the control port itself, acked at once (no agent, no
                  Redis): the guest's own ceiling under TCG, for comparison

Uses the project's Redis, database 2 unless PORTAL_REDIS_DB or PORTAL_REDIS_URL says otherwise.

    python -m bench.bench_exec [--repeats 20] [--bulk-mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")
os.environ.setdefault("PORTAL_REDIS_DB", "2")
django.setup()

from channels_redis.core import RedisChannelLayer  # noqa: E402
from django.conf import settings  # noqa: E402

from bench import bench_guestinit_boot as boot_bench  # noqa: E402
from tests.support import guest_qemu  # noqa: E402
from vmworker.exec_agent import ExecAgent  # noqa: E402
from vmworker.guestinit import STOP_COMMAND, build_initramfs, write_config_disk  # noqa: E402

ACK_BYTES = 16 * 1024
INSTANCE_ID = str(uuid.uuid4())  # every session is in the one guest
TIMEOUT_S = 60
# The boot bench's guest, kept running: shells need an app that stays up.
APP = dataclasses.replace(
    boot_bench.APP, hostname="bench-exec", argv=("/bin/sh", "-c", "echo ready; while true; do sleep 1; done")
)


def layer() -> RedisChannelLayer:
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


class Client:
    """One session's client end: sends to the agent, reads its replies, acks output."""

    def __init__(self, channel_layer, agent_channel: str, reply_to: str):
        self.layer, self.agent, self.reply_to = channel_layer, agent_channel, reply_to
        self.session = uuid.uuid4().hex
        self.received = 0
        self.acked = 0
        self.output = bytearray()
        self.keep_output = True

    async def send(self, message: dict) -> None:
        await self.layer.send(self.agent, message | {"session": self.session})

    async def open(self, *, tty: bool = True, command: str | None = None) -> None:
        request = {"type": "exec.open", "instance_id": INSTANCE_ID, "tenant": "bench", "reply_to": self.reply_to}
        await self.send(request | {"rows": 24, "cols": 80, "tty": tty, "command": command, "sent_at": time.time()})

    async def next(self) -> dict:
        while True:
            message = await asyncio.wait_for(self.layer.receive(self.reply_to), TIMEOUT_S)
            if message.get("session") != self.session:
                continue
            if message["type"] == "exec.output":
                data = binascii.a2b_base64(message["data"])
                self.received = message["offset"] + len(data)
                if self.keep_output:
                    self.output += data
                if self.received - self.acked >= ACK_BYTES:
                    self.acked = self.received
                    await self.send({"type": "exec.ack", "offset": self.received})
            if message["type"] == "exec.error":
                raise RuntimeError(message["message"])
            return message

    async def until(self, kind: str) -> dict:
        while (message := await self.next())["type"] != kind:
            pass
        return message

    async def type_text(self, text: str) -> None:
        await self.send({"type": "exec.input", "data": binascii.b2a_base64(text.encode(), newline=False).decode()})


async def measure(agent_channel: str, repeats: int, bulk_mib: int) -> dict[str, list[float]]:
    channel_layer = layer()
    reply_to = await channel_layer.new_channel()
    figures: dict[str, list[float]] = {"open_ms": [], "echo_ms": [], "one_shot_ms": [], "bulk_mib_s": []}
    for _ in range(repeats):
        client = Client(channel_layer, agent_channel, reply_to)
        started = time.perf_counter()
        await client.open()
        await client.until("exec.opened")
        figures["open_ms"].append((time.perf_counter() - started) * 1000)
        await client.type_text("exit\r")
        await client.until("exec.exit")

    client = Client(channel_layer, agent_channel, reply_to)
    await client.open()
    await client.until("exec.opened")
    await client.type_text("PS1='$ '\r")
    await asyncio.sleep(1)
    for n in range(repeats):
        character = "abcdefghij"[n % 10]
        seen = len(client.output)
        started = time.perf_counter()
        await client.type_text(character)
        while character.encode() not in client.output[seen:]:
            await client.next()
        figures["echo_ms"].append((time.perf_counter() - started) * 1000)
    await client.type_text("\x15exit\r")
    await client.until("exec.exit")

    for _ in range(repeats):
        client = Client(channel_layer, agent_channel, reply_to)
        started = time.perf_counter()
        await client.open(tty=False, command="true")
        await client.until("exec.exit")
        figures["one_shot_ms"].append((time.perf_counter() - started) * 1000)

    client = Client(channel_layer, agent_channel, reply_to)
    client.keep_output = False
    size = bulk_mib * 1024 * 1024
    await client.open(tty=False, command=f"head -c {size} /dev/zero")
    await client.until("exec.opened")
    started = time.perf_counter()
    exit_message = await client.until("exec.exit")
    elapsed = time.perf_counter() - started
    if client.received != size or exit_message["exit_code"] != 0:
        raise RuntimeError(f"bulk: received {client.received} of {size} bytes, {exit_message}")
    figures["bulk_mib_s"].append(bulk_mib / elapsed)

    # The same bytes on a terminal (tty mode: the PTY's output processing, as a shell has it).
    client = Client(channel_layer, agent_channel, reply_to)
    client.keep_output = False
    await client.open(tty=True, command=f"head -c {size} /dev/zero | tr '\\0' x")
    await client.until("exec.opened")
    started = time.perf_counter()
    await client.until("exec.exit")
    figures["bulk_tty_mib_s"] = [bulk_mib / (time.perf_counter() - started)]
    await channel_layer.close_pools()
    return figures


def bulk_direct(guest, size: int) -> float:
    """The guest's PTY -> control port throughput with nobody in between (acks sent at once)."""
    from vmworker.guestinit.protocol import (
        ControlLineReader,
        ShellExit,
        ShellOutput,
        parse_shell_message,
        shell_ack,
        shell_open,
    )

    guest.connect_control()
    control = guest._control
    reader = ControlLineReader()
    control.sendall(shell_open("direct", rows=24, cols=80, tty=False, command=f"head -c {size} /dev/zero"))
    received = 0
    started = time.perf_counter()
    control.settimeout(TIMEOUT_S)
    while True:
        for line in reader.feed(control.recv(262144)):
            message = parse_shell_message(line)
            if isinstance(message, ShellOutput):
                received += len(message.data)
                control.sendall(shell_ack("direct", len(message.data)))
            elif isinstance(message, ShellExit):
                if received != size:
                    raise RuntimeError(f"direct bulk: received {received} of {size}")
                return size / 1024 / 1024 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bulk-mib", type=int, default=32)
    args = parser.parse_args()
    kernel = guest_qemu.guest_kernel()
    if kernel is None:
        raise SystemExit("linux-image-cloud-amd64 is required")
    with tempfile.TemporaryDirectory(prefix="hvx-") as tmp:
        scratch = Path(tmp)
        initramfs = build_initramfs(
            kernel_release=kernel.name.removeprefix("vmlinuz-"),
            modules_root=Path("/lib/modules"),
            cache_dir=scratch / "initramfs",
        )
        tree = guest_qemu.make_busybox_tree(scratch / "tree")
        rootfs = guest_qemu.make_erofs(tree, scratch / "rootfs.erofs")
        write_config_disk(APP, scratch / "config.img")
        agent = ExecAgent(
            host_name=f"bench-exec-{uuid.uuid4().hex[:8]}",
            control_socket=lambda instance_id: scratch / "control.sock",
            layer_factory=layer,
        )
        agent.start()
        figures: dict = {}

        def interact(guest) -> None:
            guest.wait_for_stdout("ready")
            figures.update(asyncio.run(measure(agent.channel, args.repeats, args.bulk_mib)))
            time.sleep(2)  # the agent lets the control port go once its shells are gone
            figures["bulk_direct_mib_s"] = [bulk_direct(guest, args.bulk_mib * 1024 * 1024)]
            guest.send_control(STOP_COMMAND)

        try:
            guest_qemu.boot_guest(
                kernel=kernel,
                initramfs=initramfs,
                rootfs=rootfs,
                config_disk=scratch / "config.img",
                work_dir=scratch,
                interact=interact,
            )
        finally:
            agent.stop()
    print(f"exec bench: TCG guest, agent + Redis channel layer, {args.repeats} repeats")
    for name, values in figures.items():
        if name.startswith("bulk"):
            print(f"  {name:17} {values[0]:8.2f}  ({args.bulk_mib} MiB)")
        else:
            p95 = sorted(values)[max(0, round(0.95 * len(values)) - 1)]
            print(f"  {name:17} p50 {statistics.median(values):8.2f}  p95 {p95:8.2f}  max {max(values):8.2f}")


if __name__ == "__main__":
    main()
