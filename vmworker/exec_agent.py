"""The exec agent: a compute host's shell service, running in the host worker's process (a daemon
thread with its own asyncio loop, like vmworker.console_agent), talking over the Channels layer
it is given.

Messages it receives on ``exec_channel(host)`` (``hvexec.<host>``), from portal.services.exec
(``session`` is 1-32 of ``[A-Za-z0-9-]``, chosen by the portal)::

    {"type": "exec.open", "session", "instance_id", "tenant": str (the instance's tenant's id),
     "reply_to": channel, "rows", "cols", "tty": bool, "command": str|None, "sent_at": unix time}
    {"type": "exec.input", "session", "data": base64}       (at most INPUT_MAX_BYTES)
    {"type": "exec.resize", "session", "rows", "cols"}
    {"type": "exec.ack", "session", "offset": int}           cumulative output received; the
                                                             client sends one every few seconds
                                                             even without output (liveness)
    {"type": "exec.close", "session"}

and answers on the session's ``reply_to``::

    {"type": "exec.opened", "session"}
    {"type": "exec.output", "session", "offset": int, "data": base64}   in order, <= 4 KiB each
    {"type": "exec.exit", "session", "exit_code": int}                 the last message
    {"type": "exec.error", "session", "message": str}                  the last message

A session's messages are accepted only from what the portal sent (the agent's channel is reachable
only through the project's Redis); everything from the guest is parsed as hostile
(vmworker.guestinit.protocol, vmworker.control_relay). Bounds: MAX_SESSIONS_PER_HOST sessions,
``max_sessions_per_tenant`` of one tenant (EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST: one tenant's
shells and one-shots never take every slot of the host), SHELL_MAX_SESSIONS per instance, the
guest's output window (vmworker.exec_session; a guest past it loses the session, its output is not
passed on), one control connection per instance with a bounded send queue. A guest's shell messages
count only for its own instance's sessions. A client not heard of for CLIENT_IDLE_S is gone: its
shell is closed. An open request older than REQUEST_MAX_AGE_S is dropped (its client gave up).
Errors are logged and the agent carries on; it never takes the worker down.

No Django here: tasks.py hands it the layer and where control sockets are.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vmworker.control_relay import GuestControl
from vmworker.exec_session import (
    MAX_SESSIONS_PER_HOST,
    MAX_SESSIONS_PER_INSTANCE,
    MAX_SESSIONS_PER_TENANT,
    ShellSession,
    valid_session_id,
)
from vmworker.guestinit.protocol import (
    SHELL_DIMENSION_MAX,
    SHELL_WINDOW_BYTES,
    ShellError,
    ShellExit,
    ShellMessage,
    ShellOpened,
    ShellOutput,
    ShellRequestInvalid,
    shell_ack,
    shell_close,
    shell_input,
    shell_open,
    shell_resize,
)

logger = logging.getLogger("vmworker.exec_agent")

REQUEST_MAX_AGE_S = 10.0
INPUT_MAX_BYTES = 64 * 1024
HOUSEKEEPING_S = 1.0
ERROR_PAUSE_S = 1.0
STOP_WAIT_S = 1.0
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9\-_.]")


def exec_channel(host_name: str) -> str:
    """The host's request channel (a valid Channels name whatever the host is called)."""
    return "hvexec." + _NAME_UNSAFE.sub("-", host_name)[:80]


def _dimension(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= SHELL_DIMENSION_MAX:
        return value
    raise ShellRequestInvalid(f"rows and cols must be 1-{SHELL_DIMENSION_MAX}")


class ExecAgent:
    def __init__(
        self,
        *,
        host_name: str,
        control_socket: Callable[[str], Path],
        layer_factory: Callable[[], object],
        max_sessions_per_tenant: int = MAX_SESSIONS_PER_TENANT,
    ):
        self.channel = exec_channel(host_name)
        self.max_sessions_per_tenant = max_sessions_per_tenant
        self._control_socket = control_socket
        self._layer_factory = layer_factory
        self.sessions: dict[str, ShellSession] = {}
        self.controls: dict[str, GuestControl] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    # -- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exec-agent", daemon=True)
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
        loop = asyncio.new_event_loop()  # not asyncio.run(): see ConsoleAgent._run
        try:
            loop.run_until_complete(self._main())
        except Exception:
            logger.exception("exec_agent.crashed", extra={"channel": self.channel})
        finally:
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.layer = self._layer_factory()
        self._started.set()
        logger.info("exec_agent.started", extra={"channel": self.channel})
        workers = [asyncio.create_task(self._serve()), asyncio.create_task(self._housekeeping())]
        await self._stopping.wait()
        for worker in workers:
            worker.cancel()
        _, stuck = await asyncio.wait(workers, timeout=STOP_WAIT_S)
        for control in list(self.controls.values()):
            await control.close()  # the guest ends every shell when the host hangs up
        close = getattr(self.layer, "close_pools", None)
        if close is not None and not stuck:
            try:
                await asyncio.wait_for(close(), STOP_WAIT_S)
            except Exception:
                logger.warning("exec_agent.close_failed", exc_info=True)
        logger.info("exec_agent.stopped", extra={"channel": self.channel})

    async def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    break
                logger.warning("exec_agent.receive_failed", extra={"channel": self.channel}, exc_info=True)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            try:
                await self.handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("exec_agent.message_failed", extra={"type": message.get("type")}, exc_info=True)

    async def handle(self, message: dict) -> None:
        kind = message.get("type")
        session_id = message.get("session")
        if not valid_session_id(session_id):
            return
        if kind == "exec.open":
            await self._open(session_id, message)
            return
        session = self.sessions.get(session_id)
        control = self.controls.get(session.instance_id) if session else None
        if session is None or control is None:
            return  # ended already: late input is dropped
        session.heard_at = time.monotonic()
        try:
            if kind == "exec.input":
                data = binascii.a2b_base64(str(message.get("data", "")), strict_mode=True)
                for line in shell_input(session_id, data[:INPUT_MAX_BYTES]):
                    control.send(line)
            elif kind == "exec.resize":
                rows, cols = _dimension(message.get("rows")), _dimension(message.get("cols"))
                control.send(shell_resize(session_id, rows=rows, cols=cols))
            elif kind == "exec.ack":
                delta = session.client_ack(message.get("offset"))
                if delta:
                    control.send(shell_ack(session_id, delta))
            elif kind == "exec.close" and session.closing_since is None:
                session.closing_since = time.monotonic()
                control.send(shell_close(session_id))
        except (binascii.Error, ValueError, ShellRequestInvalid):
            pass  # a malformed message from a client is dropped

    # -- opening ----------------------------------------------------------------------------------

    async def _open(self, session_id: str, message: dict) -> None:
        reply_to = message.get("reply_to")
        if not isinstance(reply_to, str) or session_id in self.sessions:
            return
        try:
            if time.time() - float(message.get("sent_at") or 0) > REQUEST_MAX_AGE_S:
                return
            instance_id = str(message["instance_id"])
            tenant = message["tenant"]
            if not isinstance(tenant, str) or not tenant:
                raise ValueError("the request names no tenant")
            command = message.get("command")
            request = shell_open(
                session_id,
                rows=_dimension(message.get("rows")),
                cols=_dimension(message.get("cols")),
                command=command if isinstance(command, str) else None,
                tty=bool(message.get("tty", True)),
            )
            control_socket = self._control_socket(instance_id)
        except (KeyError, TypeError, ValueError, ShellRequestInvalid) as exc:
            await self._reply(reply_to, {"type": "exec.error", "session": session_id, "message": str(exc)})
            return
        if len(self.sessions) >= MAX_SESSIONS_PER_HOST:
            error = f"this host has {MAX_SESSIONS_PER_HOST} shells open already"
        elif sum(s.tenant == tenant for s in self.sessions.values()) >= self.max_sessions_per_tenant:
            error = (
                f"this tenant has {self.max_sessions_per_tenant} shells and commands running on this host already "
                "(EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST): close one or wait for one to end"
            )
        elif sum(s.instance_id == instance_id for s in self.sessions.values()) >= MAX_SESSIONS_PER_INSTANCE:
            error = f"this instance has {MAX_SESSIONS_PER_INSTANCE} shells open already"
        else:
            error = None
        if error:
            await self._reply(reply_to, {"type": "exec.error", "session": session_id, "message": error})
            return
        self.sessions[session_id] = ShellSession(session_id, instance_id, reply_to, tenant)
        control = await self._control(instance_id, control_socket)
        if control is None:
            self.sessions.pop(session_id, None)
            message = "the instance's control channel is unreachable (is its VM running?)"
            await self._reply(reply_to, {"type": "exec.error", "session": session_id, "message": message})
            return
        if not control.send(request):
            self.sessions.pop(session_id, None)
            message = "the instance is not reading its control channel"
            await self._reply(reply_to, {"type": "exec.error", "session": session_id, "message": message})
            return
        logger.info("exec_agent.session_opening", extra={"instance_id": instance_id, "session": session_id})

    async def _control(self, instance_id: str, control_socket: Path) -> GuestControl | None:
        lock = self._opening.setdefault(instance_id, asyncio.Lock())
        async with lock:
            control = self.controls.get(instance_id)
            if control is not None and not control.closed:
                return control
            if not control_socket.exists():
                return None
            control = GuestControl(
                instance_id=instance_id,
                control_socket=control_socket,
                on_shell_message=functools.partial(self._guest_message, instance_id),
                on_closed=self._control_closed,
            )
            try:
                await control.open()
            except (OSError, TimeoutError):
                logger.warning("exec_agent.connect_failed", extra={"instance_id": instance_id}, exc_info=True)
                return None
            self.controls[instance_id] = control
            return control

    # -- from the guest ---------------------------------------------------------------------------

    async def _guest_message(self, instance_id: str, message: ShellMessage) -> None:
        session = self.sessions.get(message.session_id)
        if session is None or session.instance_id != instance_id:
            # A session given up on, an id the guest made up, or one of another instance's
            # sessions (a guest speaks for its own shells only).
            return
        reply: dict = {"session": session.session_id}
        if isinstance(message, ShellOutput):
            if session.unacked + len(message.data) > SHELL_WINDOW_BYTES:
                # The guest ignores the window it was given: its output is not passed on.
                logger.warning("exec_agent.guest_past_window", extra={"instance_id": instance_id})
                await self._give_up(session, "the instance sent output past its window; the shell was closed")
                return
            offset = session.output(len(message.data))
            data = binascii.b2a_base64(message.data, newline=False).decode()
            reply |= {"type": "exec.output", "offset": offset, "data": data}
        elif isinstance(message, ShellOpened):
            if session.opened:
                return  # said once; a guest repeating it gets no message per line to the client
            session.opened = True
            reply["type"] = "exec.opened"
        elif isinstance(message, ShellExit):
            self._end(session)
            reply |= {"type": "exec.exit", "exit_code": message.exit_code}
        elif isinstance(message, ShellError):
            self._end(session)
            reply |= {"type": "exec.error", "message": message.message}
        await self._reply(session.reply_to, reply)

    async def _control_closed(self, control: GuestControl) -> None:
        if self.controls.get(control.instance_id) is control:
            del self.controls[control.instance_id]
        for session in [s for s in self.sessions.values() if s.instance_id == control.instance_id]:
            self._end(session)
            await self._error(session, "the connection to the instance ended (its VM stopped?)")

    async def _give_up(self, session: ShellSession, reason: str, *, tell_client: bool = True) -> None:
        """Ends the session here and asks the guest to end its shell."""
        self._end(session)
        control = self.controls.get(session.instance_id)
        if control is not None:
            control.send(shell_close(session.session_id))
        if tell_client:
            await self._error(session, reason)

    def _end(self, session: ShellSession) -> None:
        self.sessions.pop(session.session_id, None)
        extra = {"instance_id": session.instance_id, "session": session.session_id}
        logger.info("exec_agent.session_ended", extra=extra)

    async def _error(self, session: ShellSession, message: str) -> None:
        await self._reply(session.reply_to, {"type": "exec.error", "session": session.session_id, "message": message})

    async def _reply(self, channel: str, message: dict) -> None:
        try:
            await self.layer.send(channel, message)
        except asyncio.CancelledError:
            raise
        except Exception:  # ChannelFull: the client stopped reading; its idle limit ends the session
            logger.warning("exec_agent.reply_failed", extra={"type": message.get("type")}, exc_info=True)

    # -- housekeeping -----------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self.expire(time.monotonic())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("exec_agent.housekeeping_failed", exc_info=True)

    async def expire(self, now: float) -> None:
        """Gives up sessions whose client went away or whose guest never answered, and closes the
        control connections nobody uses any more (no session, no relay client)."""
        for session in list(self.sessions.values()):
            reason = session.expired(now)
            if reason is None:
                continue
            await self._give_up(session, reason, tell_client=reason != "the client went away")
        for instance_id, control in list(self.controls.items()):
            in_use = any(s.instance_id == instance_id for s in self.sessions.values())
            if not in_use and control.relay_clients == 0:
                await control.close()
