"""One shared connection to an instance's control port, for as long as shells are open.

QEMU serves a VM's control socket (vmworker.guestinit.protocol) to one client at a time, and a
shell holds its connection for minutes. So while shells are open, the exec agent holds the one
connection here and relays the runtime's own short requests through it:

- ``GuestControl.open()`` connects to the control socket, then listens on the instance's relay
  socket (``<uuid>.relay`` beside it, 0600). The runtime's ``request_stop`` and ``exec_check``
  try the relay socket first and the control socket when nobody listens there, so a stop or a
  health check is never queued behind a shell.
- From a relay client only ``stop`` and ``exec ...`` lines go on to the guest (at most
  RELAY_LINE_MAX_BYTES each); every guest line that is not a shell message goes back to every
  relay client (a client that does not read is dropped past RELAY_CLIENT_BUFFER_BYTES).
- Guest ``sh-`` lines are parsed (hostile: parse_shell_message never raises, lines are bounded
  by ControlLineReader) and handed to ``on_shell_message``; malformed ones are counted and
  logged at most once a minute. Consecutive output pieces of one session read together are
  handed on as one (at most SHELL_CHUNK_BYTES): a program writing a line at a time makes one
  guest line per line, and while the agent is busy sending they pile up in the socket, so a
  loaded host sends fewer, fuller messages instead of falling further behind.
- Lines to the guest wait in a bounded queue written by one task per connection: a guest that
  does not read its port fills it, and then the connection is closed (its shells end) instead
  of stalling the agent, which serves every instance of the host.

No Django here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from vmworker.guestinit.protocol import (
    SHELL_CHUNK_BYTES,
    SHELL_RECORD_MAX_BYTES,
    ControlLineReader,
    MalformedRecord,
    ShellMessage,
    ShellOutput,
    is_shell_line,
    parse_shell_message,
)

logger = logging.getLogger("vmworker.control_relay")

CONNECT_TIMEOUT_S = 5.0
SEND_QUEUE_MAX_LINES = 256
RELAY_LINE_MAX_BYTES = 16 * 1024
RELAY_CLIENT_BUFFER_BYTES = 1024 * 1024
RELAY_MAX_CLIENTS = 16
READ_CHUNK_BYTES = 64 * 1024
MALFORMED_LOG_EVERY_S = 60.0


def coalesce_output(messages: list[ShellMessage]) -> list[ShellMessage]:
    """Joins consecutive ShellOutput pieces of one session, each result at most SHELL_CHUNK_BYTES
    (pieces are never split); every other message keeps its place."""
    merged: list[ShellMessage] = []
    for message in messages:
        last = merged[-1] if merged else None
        if (
            isinstance(message, ShellOutput)
            and isinstance(last, ShellOutput)
            and last.session_id == message.session_id
            and len(last.data) + len(message.data) <= SHELL_CHUNK_BYTES
        ):
            merged[-1] = ShellOutput(session_id=last.session_id, data=last.data + message.data)
        else:
            merged.append(message)
    return merged


def relay_socket_path(control_socket: Path) -> Path:
    return control_socket.with_suffix(".relay")


def relay_allows(line: bytes) -> bool:
    """What a relay client may say to the guest: the runtime's stop and exec requests."""
    return line == b"stop" or line.startswith(b"exec ")


class GuestControl:
    def __init__(
        self,
        *,
        instance_id: str,
        control_socket: Path,
        on_shell_message: Callable[[ShellMessage], Awaitable[None]],
        on_closed: Callable[[GuestControl], Awaitable[None]],
    ):
        self.instance_id = instance_id
        self.control_socket = Path(control_socket)
        self.relay_socket = relay_socket_path(self.control_socket)
        self._on_shell_message = on_shell_message
        self._on_closed = on_closed
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(SEND_QUEUE_MAX_LINES)
        self._tasks: list[asyncio.Task] = []
        self._relay_server: asyncio.base_events.Server | None = None
        self._relay_clients: set[asyncio.StreamWriter] = set()
        self._lines = ControlLineReader(max_bytes=max(SHELL_RECORD_MAX_BYTES, RELAY_LINE_MAX_BYTES))
        self._malformed = 0
        self._malformed_logged_at = 0.0
        self.closed = False

    @property
    def relay_clients(self) -> int:
        return len(self._relay_clients)

    async def open(self) -> None:
        """Connects (raises OSError or TimeoutError) and starts relaying."""
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.control_socket), limit=READ_CHUNK_BYTES), CONNECT_TIMEOUT_S
        )
        self._tasks = [asyncio.create_task(self._read_guest()), asyncio.create_task(self._write_guest())]
        try:
            self.relay_socket.unlink(missing_ok=True)
            self._relay_server = await asyncio.start_unix_server(self._serve_relay_client, path=str(self.relay_socket))
            os.chmod(self.relay_socket, 0o600)
        except OSError:
            # Without a relay the runtime's stop waits for the shells to end (bounded by its deadline).
            logger.warning("control_relay.relay_failed", extra={"instance_id": self.instance_id}, exc_info=True)

    def send(self, line: bytes) -> bool:
        """Queues one line for the guest; False (and the connection closes) when the guest has
        not been reading its port."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait(line)
        except asyncio.QueueFull:
            logger.warning("control_relay.guest_not_reading", extra={"instance_id": self.instance_id})
            asyncio.get_running_loop().create_task(self.close())
            return False
        return True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._relay_server is not None:
            self._relay_server.close()
            with contextlib.suppress(OSError):
                self.relay_socket.unlink(missing_ok=True)
        for client in list(self._relay_clients):
            client.close()
        self._relay_clients.clear()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._writer is not None:
            self._writer.close()
        await self._on_closed(self)

    # -- guest -> host --------------------------------------------------------------------------

    async def _read_guest(self) -> None:
        try:
            while True:
                chunk = await self._reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                messages = [message for line in self._lines.feed(chunk) if (message := self._guest_line(line))]
                for message in coalesce_output(messages):
                    await self._on_shell_message(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("control_relay.read_failed", extra={"instance_id": self.instance_id}, exc_info=True)
        await self.close()

    def _guest_line(self, line: bytes) -> ShellMessage | None:
        """A shell message to hand on; other lines go to the relay clients at once."""
        if not is_shell_line(line):
            for client in list(self._relay_clients):
                if client.transport.get_write_buffer_size() > RELAY_CLIENT_BUFFER_BYTES:
                    self._drop_client(client)
                else:
                    client.write(line + b"\n")
            return None
        message = parse_shell_message(line)
        if isinstance(message, MalformedRecord) or message is None:
            self._malformed += 1
            now = time.monotonic()
            if now - self._malformed_logged_at >= MALFORMED_LOG_EVERY_S:
                self._malformed_logged_at = now
                logger.warning(
                    "control_relay.guest_lines_malformed",
                    extra={"instance_id": self.instance_id, "count": self._malformed, "sample": line[:64]},
                )
            return None
        return message

    # -- host -> guest --------------------------------------------------------------------------

    async def _write_guest(self) -> None:
        try:
            while True:
                line = await self._queue.get()
                self._writer.write(line)
                await self._writer.drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("control_relay.write_failed", extra={"instance_id": self.instance_id}, exc_info=True)
        await self.close()

    # -- relay clients (the runtime's stop and exec_check) --------------------------------------

    def _drop_client(self, client: asyncio.StreamWriter) -> None:
        self._relay_clients.discard(client)
        client.close()

    async def _serve_relay_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closed or len(self._relay_clients) >= RELAY_MAX_CLIENTS:
            writer.close()
            return
        self._relay_clients.add(writer)
        lines = ControlLineReader(max_bytes=RELAY_LINE_MAX_BYTES)
        try:
            while not self.closed:
                chunk = await reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                for line in lines.feed(chunk):
                    line = line.rstrip(b"\r")
                    if relay_allows(line):
                        self.send(line + b"\n")
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            self._drop_client(writer)
