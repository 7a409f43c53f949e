"""The console agent: a compute host's console service, running in the host worker's process (a
daemon thread with its own asyncio loop), talking over the Channels layer it is given.

Messages (what portal.consumers relies on):

- It receives on ``console_channel(host)`` (``hvconsole.<host>``) backlog requests
  ``{"type": "console.backlog.request", "instance_id", "after": seq, "reply_to": channel,
  "sent_at": unix time}`` and answers on ``reply_to`` with
  ``{"type": "console.backlog", "instance_id", "found": bool, "lines": [{"seq","stream","text"}],
  "truncated_first_seq": int|None, "next_seq": int, "exit_code": int|None}``
  (``found`` is false when this host has no log for the instance). Requests older than
  ``REQUEST_MAX_AGE_S`` are dropped: their consumer has given up.
- It tails the guest.log of every instance directory on this host (a stat per log per tick,
  at most ``READ_MAX_BYTES`` read per log per tick) and sends, per tick and instance with new
  lines, ``{"type": "console.lines", "instance_id", "lines": [...]}`` to the group
  ``console_group(instance_id)``; once the guest's ``exit`` record is read, after the lines,
  ``{"type": "console.exit", "instance_id", "exit_code"}``.

Log reads run in a worker thread (one at a time per log, under that log's lock), so a big
catch-up for one backlog request does not stall the requests and live lines of the others.

Redis is at-most-once: a lost batch shows up at the consumer as a seq gap, and the consumer
asks for the backlog again. Every layer error is logged and the agent carries on; it never
takes the worker down. No Django here: tasks.py hands it the layer and the directory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from vmworker.console import BACKLOG_MAX_LINES, GuestLogTail

logger = logging.getLogger("vmworker.console_agent")

GUEST_LOG = "guest.log"
POLL_S = 0.05
SCAN_S = 0.5
REQUEST_MAX_AGE_S = 10.0
ERROR_PAUSE_S = 1.0
STOP_WAIT_S = 1.0
BATCH_MAX_LINES = 500
CATCH_UP_MAX_READS = 64  # a backlog request reads at most this many chunks of a log it did not follow yet
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9\-_.]")


def console_channel(host_name: str) -> str:
    """The host's request channel (a valid Channels name whatever the host is called)."""
    return "hvconsole." + _NAME_UNSAFE.sub("-", host_name)[:80]


def console_group(instance_id) -> str:
    return f"console.{uuid.UUID(str(instance_id))}"


class ConsoleAgent:
    def __init__(
        self,
        *,
        host_name: str,
        instances_dir: Path,
        layer_factory: Callable[[], object],
        poll_s: float = POLL_S,
        scan_s: float = SCAN_S,
    ):
        self.channel = console_channel(host_name)
        self.instances_dir = Path(instances_dir)
        self._layer_factory = layer_factory
        self._poll_s = poll_s
        self._scan_s = scan_s
        self._tails: dict[str, GuestLogTail] = {}
        self._tail_locks: dict[str, asyncio.Lock] = {}
        self._exit_sent: set[str] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    # -- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-agent", daemon=True)
        self._thread.start()
        self._started.wait(timeout=5)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None and self._stopping is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass  # the loop has already closed
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        # Not asyncio.run(): at the end it waits for every task, and a cancelled channels_redis
        # receive can stay stuck on its internal lock; the agent must stop in bounded time.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:
            logger.exception("console_agent.crashed", extra={"channel": self.channel})
        finally:
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.layer = self._layer_factory()
        self._started.set()
        logger.info("console_agent.started", extra={"channel": self.channel})
        workers = [asyncio.create_task(self._serve_requests()), asyncio.create_task(self._tail_logs())]
        await self._stopping.wait()
        for worker in workers:
            worker.cancel()
        _, stuck = await asyncio.wait(workers, timeout=STOP_WAIT_S)
        close = getattr(self.layer, "close_pools", None)
        if close is not None and not stuck:
            try:
                await asyncio.wait_for(close(), STOP_WAIT_S)
            except Exception:
                logger.warning("console_agent.close_failed", exc_info=True)
        logger.info("console_agent.stopped", extra={"channel": self.channel})

    # -- backlog requests -----------------------------------------------------------------------

    async def _serve_requests(self) -> None:
        while not self._stopping.is_set():
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    break  # redis-py may turn the cancellation into a TimeoutError
                logger.warning("console_agent.receive_failed", extra={"channel": self.channel}, exc_info=True)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            if message.get("type") != "console.backlog.request":
                continue
            if time.time() - float(message.get("sent_at") or 0) > REQUEST_MAX_AGE_S:
                continue
            try:
                await self.answer_backlog(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("console_agent.backlog_failed", extra={"request": message}, exc_info=True)

    async def answer_backlog(self, request: dict) -> None:
        reply_to = str(request["reply_to"])
        try:
            instance_id = str(uuid.UUID(str(request["instance_id"])))
            after = int(request.get("after", -1))
        except (KeyError, TypeError, ValueError):
            return
        tail = self._tail(instance_id)
        reply = {"type": "console.backlog", "instance_id": instance_id, "found": tail is not None}
        if tail is not None:
            # Whatever it reads now goes out live too, so the group and the backlog agree.
            for _ in range(CATCH_UP_MAX_READS):
                if not await self._advance(instance_id, tail):
                    break
            async with self._tail_lock(instance_id):
                backlog = await asyncio.to_thread(tail.backlog, after, max_lines=BACKLOG_MAX_LINES)
            reply |= {
                "lines": [line.as_message() for line in backlog.lines],
                "truncated_first_seq": backlog.truncated_first_seq,
                "next_seq": backlog.next_seq,
                "exit_code": backlog.exit_code,
            }
        await self.layer.send(reply_to, reply)

    # -- tailing --------------------------------------------------------------------------------

    def _tail_lock(self, instance_id: str) -> asyncio.Lock:
        return self._tail_locks.setdefault(instance_id, asyncio.Lock())

    def _tail(self, instance_id: str) -> GuestLogTail | None:
        tail = self._tails.get(instance_id)
        if tail is None:
            path = self.instances_dir / instance_id / GUEST_LOG
            if not path.exists() and not path.with_name(f"{GUEST_LOG}.0").exists():
                return None
            tail = self._tails[instance_id] = GuestLogTail(path)
        return tail

    def _scan(self) -> None:
        try:
            # guest.log.0 too: virtlogd renames guest.log before it makes the next one.
            present = {
                path.name
                for path in self.instances_dir.iterdir()
                if (path / GUEST_LOG).exists() or (path / f"{GUEST_LOG}.0").exists()
            }
        except FileNotFoundError:
            present = set()
        for instance_id in present - self._tails.keys():
            self._tail(instance_id)
        for instance_id in self._tails.keys() - present:
            del self._tails[instance_id]  # removed: its files are gone
            self._tail_locks.pop(instance_id, None)
            self._exit_sent.discard(instance_id)

    async def _tail_logs(self) -> None:
        next_scan = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self._scan_s
                for instance_id, tail in list(self._tails.items()):
                    await self._advance(instance_id, tail)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. a log we may not read: say so and keep serving the others
                logger.warning("console_agent.tail_failed", extra={"channel": self.channel}, exc_info=True)
                await asyncio.sleep(ERROR_PAUSE_S)
            await asyncio.sleep(self._poll_s)

    async def _advance(self, instance_id: str, tail: GuestLogTail) -> bool:
        """Reads one bounded chunk of new log and publishes it; False when there was nothing new."""
        async with self._tail_lock(instance_id):  # held while sending too: batches go out in seq order
            if not tail.has_unread():
                return False
            lines = await asyncio.to_thread(tail.read)
            group = console_group(instance_id)
            for start in range(0, len(lines), BATCH_MAX_LINES):
                batch = [line.as_message() for line in lines[start : start + BATCH_MAX_LINES]]
                await self._group_send(group, {"type": "console.lines", "instance_id": instance_id, "lines": batch})
            if tail.exit_code is not None and instance_id not in self._exit_sent:
                self._exit_sent.add(instance_id)
                exit_message = {"type": "console.exit", "instance_id": instance_id, "exit_code": tail.exit_code}
                await self._group_send(group, exit_message)
        return True

    async def _group_send(self, group: str, message: dict) -> None:
        try:
            await self.layer.group_send(group, message)
        except asyncio.CancelledError:
            raise
        except Exception:  # the log file is the record; a consumer recovers a lost batch by its seq gap
            logger.warning("console_agent.send_failed", extra={"group": group}, exc_info=True)
