"""Benchmark of issue 13's exec through the whole portal: an API client's WebSocket to daphne, the
exec consumer, Redis, the host worker's exec agent, a real HyperVM (TCG) and back; and REST
one-shot commands. (bench/bench_exec.py measures the agent and the guest alone.)

Not a test: prints figures. Uses the dev database (a throw-away tenant, removed at the end), the
project's Redis (database 2 unless PORTAL_REDIS_DB or PORTAL_REDIS_URL says otherwise), its own
registry on 127.0.0.1, one compute-host worker and daphne on 127.0.0.2 (bench/stack.py).

    open_ms       WebSocket handshake + the shell forked in the guest ("opened")
    echo_ms       one key sent -> its echo received
    one_shot_ms   POST .../exec/ {"command": ["true"]} -> the answer
    bulk_mib_s    ``head -c <N> /dev/zero | tr '\\0' x`` in the shell, read through the socket
    lines_s       ``seq 1 20000`` in the shell (108,894 bytes written a line at a time, as a
                  program's line-buffered output to a terminal is), with its output messages

    python -m bench.bench_exec_portal [--repeats 20] [--bulk-mib 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import statistics
import time
import urllib.request

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")
os.environ.setdefault("PORTAL_REDIS_DB", "2")
django.setup()

import websocket  # noqa: E402

from bench.stack import bench_stack, wait_for  # noqa: E402
from portal.choices import INSTANCE_UP  # noqa: E402
from portal.exec_client import ACK_BYTES, ACK_DELAY_S  # noqa: E402
from portal.marathon import parse_app_definition  # noqa: E402
from portal.models import Instance  # noqa: E402
from portal.services.apps import app_create  # noqa: E402
from tenants.services import api_token_create  # noqa: E402

TIMEOUT_S = 300


class Shell:
    def __init__(self, url: str, key: str, slug: str, instance_id: str):
        ws_url = url.replace("http", "ws", 1) + f"/ws/t/{slug}/instances/{instance_id}/exec/?rows=24&cols=80"
        self.socket = websocket.create_connection(
            ws_url, header=[f"Authorization: Token {key}"], suppress_origin=True, timeout=TIMEOUT_S
        )
        self.output = bytearray()
        self.acked = 0
        self.messages = 0

    def next(self) -> dict:
        """The next message; output is acked as portal.exec_client does (every ACK_BYTES, or when
        no more came for ACK_DELAY_S)."""
        while len(self.output) > self.acked and not select.select([self.socket.sock], [], [], ACK_DELAY_S)[0]:
            self.ack()
        message = json.loads(self.socket.recv())
        if message["type"] == "output":
            self.messages += 1
            self.output += base64.b64decode(message["data"])
            if len(self.output) - self.acked >= ACK_BYTES:
                self.ack()
        elif message["type"] == "error":
            raise RuntimeError(message["message"])
        return message

    def until(self, kind: str) -> dict:
        while (message := self.next())["type"] != kind:
            pass
        return message

    def wait_output(self, text: bytes, start: int) -> None:
        """Bounded as a whole, not per message: a stream that keeps sending other messages
        (or output that never ends in ``text``) fails the run after TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while text not in self.output[start:]:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{text!r} not seen in {TIMEOUT_S} s: {len(self.output) - start} bytes since, "
                    f"{self.acked} acked, last {bytes(self.output[-80:])!r}"
                )
            self.next()

    def ack(self) -> None:
        self.acked = len(self.output)
        self.socket.send(json.dumps({"type": "ack", "bytes": self.acked}))

    def type(self, text: str) -> None:
        self.socket.send(json.dumps({"type": "input", "data": text}))


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"p50 {statistics.median(ordered):8.2f}  p95 {p95:8.2f}  max {ordered[-1]:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bulk-mib", type=int, default=8)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"open_ms": [], "echo_ms": [], "one_shot_ms": [], "bulk_mib_s": []}
    with bench_stack("exec", "Exec bench", {}) as stack:
        stack.start_worker(concurrency=2)
        url = stack.start_web()
        stack.claim_placement(120, restore_others=True)
        definition = {
            "id": "/exec-bench",
            "instances": 1,
            "cpus": 0.5,
            "mem": 128,
            "cmd": "exec sleep 3600",
            "container": {"docker": {"image": stack.image}},
            "portDefinitions": [],
        }
        app = app_create(access=stack.access, definition=parse_app_definition(definition)).app
        instance = wait_for(
            "the instance to run", lambda: Instance.objects.filter(app=app, status__in=INSTANCE_UP).first(), TIMEOUT_S
        )
        wait_for("daphne", lambda: urllib.request.urlopen(url + "/login/", timeout=5).status == 200, 60)
        _, key = api_token_create(user=stack.user, name="bench", tenant=stack.tenant)
        slug, instance_id = stack.tenant.slug, str(instance.pk)

        for _ in range(args.repeats):
            started = time.perf_counter()
            shell = Shell(url, key, slug, instance_id)
            shell.until("opened")
            figures["open_ms"].append((time.perf_counter() - started) * 1000)
            shell.type("exit\r")
            shell.until("exit")
            shell.socket.close()

        shell = Shell(url, key, slug, instance_id)
        shell.until("opened")
        shell.type("PS1='$ '\r")
        time.sleep(1)
        for n in range(args.repeats):
            character = "abcdefghij"[n % 10]
            start = len(shell.output)
            started = time.perf_counter()
            shell.type(character)
            shell.wait_output(character.encode(), start)
            figures["echo_ms"].append((time.perf_counter() - started) * 1000)
        shell.type("\x15")
        time.sleep(0.5)
        size = args.bulk_mib * 1024 * 1024
        start = len(shell.output)
        shell.type(f"head -c {size} /dev/zero | tr '\\0' x; echo bulk-''done\r")
        shell.wait_output(b"x", start)
        started = time.perf_counter()
        shell.wait_output(b"bulk-done", start)
        figures["bulk_mib_s"].append(args.bulk_mib / (time.perf_counter() - started))
        start = len(shell.output)
        messages_before = shell.messages
        started = time.perf_counter()
        shell.type("seq 1 20000; echo seq-''done\r")
        shell.wait_output(b"seq-done", start)
        figures["lines_s"] = [time.perf_counter() - started]
        lines_messages = shell.messages - messages_before
        shell.type("exit\r")
        shell.until("exit")
        shell.socket.close()

        for _ in range(args.repeats):
            request = urllib.request.Request(
                f"{url}/api/v1/tenants/{slug}/instances/{instance_id}/exec/",
                data=json.dumps({"command": ["true"]}).encode(),
                headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
                method="POST",
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                answer = json.loads(response.read())
            figures["one_shot_ms"].append((time.perf_counter() - started) * 1000)
            if answer["exit_code"] != 0:
                raise RuntimeError(answer)

    print(f"exec through the portal: daphne + consumer + Redis + agent + TCG guest, {args.repeats} repeats")
    for name, values in figures.items():
        if name == "bulk_mib_s":
            print(f"  {name:12} {values[0]:8.2f}  ({args.bulk_mib} MiB through the WebSocket)")
        elif name == "lines_s":
            print(f"  {name:12} {values[0]:8.2f}  (seq 1 20000: {lines_messages} output messages)")
        else:
            print(f"  {name:12} {percentiles(values)}")


if __name__ == "__main__":
    main()
