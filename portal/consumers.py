"""WebSocket consumers: the tenant and app event streams and the instance console.

Contract (the browser side is static/js/live.js; routes in portal/routing.py):

- Every socket is authorized like the API: the session user through
  tenants.access.tenant_access_resolve with at least the viewer role. A refused socket is
  accepted and closed at once with 4403 (4404 for an unknown app or instance of a tenant the
  user may see) and gets no message. (Closing before accept would be a bare HTTP 403.) A
  handshake from another origin than the portal's own is refused before that, with a 403
  (portal.stream_security, which also holds the rules below). The check is done again every
  STREAM_RECHECK_S (portal.stream_security.StreamGuard, the re-check every stream kind uses): a
  member removed from the tenant, a user deactivated or a session logged out is closed with
  4403 within that poll. A socket may carry an API token instead (``Authorization: Token <key>``
  on the handshake, for API clients such as portal.exec_client): it acts as the token's user
  within the token's tenant, and the re-check reads the token again.
- Each socket holds one of its user's MAX_STREAMS_PER_USER stream leases (shared with
  /v2/events, across web processes): a socket over the cap is accepted and closed at once with
  4429 and the reason, and gets no message.
- ``/ws/t/<slug>/`` and ``/ws/t/<slug>/apps/<id>/``: with ``?after=<event id>`` the Event rows of
  that scope with id > after are replayed first (at most EVENT_REPLAY_LIMIT, else one
  ``{"type": "reset"}`` and the stream goes on from the newest row), then live ones; without it
  only events from now on. Each is ``{"type": "event", "id", "kind", "app_id", "instance_id",
  "data"}``, in id order, never an id twice. The live Channels message is only a trigger: rows are
  read with the gap-safe portal.selectors.event_list_after, and a slow poll covers dropped
  messages (Redis is at-most-once). The horizon that read needs is shared by the sockets of a
  process for EVENT_HORIZON_MAX_AGE_S (portal.selectors.event_read_limit), so the database load
  of a burst of events does not grow with the number of sockets.
- ``/ws/t/<slug>/instances/<uuid>/console/?after=<seq>``: ``{"type": "lines", "lines": [{"seq",
  "stream", "text"}]}`` — the backlog (last <= 1000 lines with seq > after; a
  ``{"type": "truncated", "first_seq"}`` first when older ones were cut), then live batches, never
  a seq <= the last one sent; and ``{"type": "status", "state":
  "waiting|live|unavailable|exited|gone", "exit_code", "message"}``. The lines come from the
  console agent of the instance's host (vmworker.console_agent): the consumer joins the
  instance's console group first, then asks the host for the backlog and holds live lines back
  until it arrives; a seq gap in live lines (a dropped message) makes it ask again. A host that
  does not answer within BACKLOG_TIMEOUT_S (or whose request channel is full) makes the state
  ``unavailable`` and the consumer asks again every POLL_S, going ``live`` when it answers;
  ``gone`` only when the Instance row says the instance ended (or has no host). While
  ``waiting``, the row is read every POLL_S and live lines of the instance start it at once.
- ``/ws/t/<slug>/instances/<uuid>/exec/?rows=&cols=``: a shell in the instance's container, for
  the developer role and above (portal.services.exec writes its ``exec.shell`` audit entry when
  it opens). Refusals, each after one ``{"type": "error", "message"}`` saying why: 4403 no
  access or a role below developer (also when the role is lost while open), 4409 the instance
  is not running, 4400 a message that is not one of the below, 4429 more than MESSAGES_PER_S
  messages a second (after a burst of MESSAGES_BURST), 4502 the host could not open or keep
  the shell; 4404 (no message) an unknown instance or one of another tenant. The client sends
  ``{"type": "input", "data": text}`` (keystrokes; at most INPUT_MAX_BYTES),
  ``{"type": "resize", "rows", "cols"}``, ``{"type": "ping"}`` and ``{"type": "ack", "bytes":
  n}`` (n: the output bytes it has written to its terminal so far, cumulative; sent every
  ACK_BYTES or so, and soon after output stops); it gets ``{"type": "opened", "session"}``,
  ``{"type": "output", "data": base64}`` (terminal bytes, in order) and at the end ``{"type":
  "exit", "exit_code"}`` (then close 1000). Output is acked to the host only as the client acks
  it (never beyond what was sent to it), so a client that does not read holds the shell back:
  at most one guest window (SHELL_WINDOW_BYTES) per shell waits in the portal, however the
  client's socket drains (daphne has no send backpressure). Acks do not count against
  MESSAGES_PER_S (a fast shell's client sends many) but have their own bound, ACKS_PER_S.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from portal.choices import INSTANCE_TERMINAL, InstanceStatus
from portal.events import app_group, instance_group, tenant_group
from portal.models import App, Instance
from portal.selectors import EVENT_REPLAY_LIMIT, event_latest_id, event_list_after
from portal.services.exec import ExecRefused, InstanceNotFound, InstanceNotRunning, exec_shell_start
from portal.stream_security import (
    CLOSE_TOO_MANY_STREAMS,
    StreamCredentials,
    StreamGuard,
    StreamVerdict,
    stream_access_now,
    too_many_streams_message,
)
from tenants.access import RoleRequired, TenantNotFound, tenant_access_resolve
from tenants.authentication import token_from_header
from tenants.choices import TenantRole
from tenants.models import ApiToken
from vmworker.console_agent import console_channel, console_group
from vmworker.exec_agent import exec_channel
from vmworker.guestinit.protocol import SHELL_DIMENSION_MAX

logger = logging.getLogger("portal.consumers")

CLOSE_REFUSED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_MESSAGE = 4400
CLOSE_NOT_RUNNING = 4409
CLOSE_SHELL_FAILED = 4502
INPUT_MAX_BYTES = 64 * 1024
MESSAGES_PER_S = 50  # what one shell socket may send (keys come one message each; a paste is one)
MESSAGES_BURST = 200
ACK_BYTES = 16 * 1024  # client acks reach the shell's host in steps this big (and every poll)
ACKS_PER_S = 500  # a client's acks (one per ACK_BYTES written, or 50 ms after output stops: 8 MiB/s)
ACKS_BURST = 1000
POLL_S = 2.0  # dropped events, a console waiting or unavailable; the access re-check runs in it
EVENT_HORIZON_MAX_AGE_S = 0.2
EVENT_CATCH_UP_MAX_BATCHES = 20
BACKLOG_TIMEOUT_S = 2.0
PENDING_MAX_LINES = 5000
WAITING = frozenset({InstanceStatus.STAGED, InstanceStatus.PULLING, InstanceStatus.PREPARING, InstanceStatus.BOOTING})


def _scope_identity(scope) -> tuple[object, ApiToken | None]:
    """Who a socket acts for: the user of the API token in its Authorization header (an API
    client; a bad token is nobody), else the session's user."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            token = token_from_header(value.decode("latin1"))
            return (token.user, token) if token is not None else (None, None)
    return scope.get("user"), None


def _viewer_access(user, slug: str, token: ApiToken | None = None):
    if user is None or not user.is_authenticated:
        return None
    try:
        access = tenant_access_resolve(user=user, slug=slug, token=token)
        access.require(TenantRole.VIEWER)
    except (TenantNotFound, RoleRequired):
        return None
    return access


def _query_int(scope, name: str) -> int | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get(name)
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


class TenantScopedConsumer(AsyncJsonWebsocketConsumer):
    """Resolves the tenant from the URL for the session user, or refuses the socket; checks again
    every POLL_S and calls ``tick()`` while the socket stays allowed."""

    no_access_message = ""  # sent before a 4403 for no access (the event streams send nothing)

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        self.slug = kwargs["slug"]
        self.refused = False
        self._poller = None
        self.guard = None
        user, token = await database_sync_to_async(_scope_identity)(self.scope)
        self.access = await database_sync_to_async(_viewer_access)(user, self.slug, token)
        await self.accept()
        if self.access is None:
            if self.no_access_message:
                await self.send_json({"type": "error", "message": self.no_access_message})
            await self.refuse(CLOSE_REFUSED)
            return
        session_key = getattr(self.scope.get("session"), "session_key", None)
        credentials = StreamCredentials(
            user_id=user.pk,
            slug=self.slug,
            session_key=None if token else session_key,
            token_id=token.pk if token else None,
        )
        self.guard = await database_sync_to_async(StreamGuard.open)(credentials)
        if self.guard is None:
            await self.refuse(CLOSE_TOO_MANY_STREAMS, reason=too_many_streams_message())
            return
        await self.open(**kwargs)
        if not self.refused:
            self._poller = asyncio.create_task(self._poll())

    async def open(self, **kwargs) -> None:
        raise NotImplementedError

    async def tick(self) -> None:
        """Called every POLL_S while the socket is open and still allowed."""

    async def refuse(self, code: int, reason: str | None = None) -> None:
        self.refused = True
        await self.close(code=code, reason=reason)

    async def _poll(self) -> None:
        checked_at = time.monotonic()
        while not self.refused:
            await asyncio.sleep(POLL_S)
            try:
                # At the poll nearest to STREAM_RECHECK_S (every poll with the defaults).
                if time.monotonic() - checked_at >= settings.STREAM_RECHECK_S - POLL_S / 2:
                    verdict = await database_sync_to_async(self.guard.recheck)()
                    checked_at = time.monotonic()
                    if verdict is StreamVerdict.ACCESS_LOST:
                        await self.refuse(CLOSE_REFUSED)
                        return
                    if verdict is StreamVerdict.TOO_MANY_STREAMS:
                        await self.refuse(CLOSE_TOO_MANY_STREAMS, reason=too_many_streams_message())
                        return
                await self.tick()
            except Exception:  # e.g. the database restarting: the next poll tries again
                logger.warning("consumers.poll_failed", extra={"path": self.scope.get("path")}, exc_info=True)

    async def disconnect(self, code):
        if getattr(self, "_poller", None) is not None:
            self._poller.cancel()
        if getattr(self, "guard", None) is not None:
            await asyncio.to_thread(self.guard.close)

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups.append(group)  # left again on disconnect

    async def receive_json(self, content, **kwargs):
        pass  # {"type": "ping"} or anything else: nothing to answer


class EventStreamConsumer(TenantScopedConsumer):
    """The tenant's events (``/ws/t/<slug>/``) or one app's (``/ws/t/<slug>/apps/<id>/``)."""

    async def open(self, slug: str, app_id: int | None = None) -> None:
        self.app = None
        self._lock = asyncio.Lock()
        if app_id is not None:
            apps = App.objects.for_tenant(self.access.tenant).filter(pk=app_id)
            self.app = await database_sync_to_async(apps.first)()
            if self.app is None:
                await self.refuse(CLOSE_NOT_FOUND)
                return
        await self.join(app_group(self.app.pk) if self.app else tenant_group(self.access.tenant.pk))
        after = _query_int(self.scope, "after")
        if after is None:
            self.last_id = await self.latest_id()
        else:
            self.last_id = after
            await self.catch_up(replay=True)

    async def latest_id(self) -> int:
        return await database_sync_to_async(event_latest_id)(tenant=self.access.tenant, app=self.app)

    async def portal_event(self, message):
        event_id = message.get("event_id", 0)
        if event_id > self.last_id:
            await self.catch_up(at_least=event_id)

    async def tick(self) -> None:
        await self.catch_up()

    async def catch_up(self, *, replay: bool = False, at_least: int | None = None) -> None:
        # A replay reads a fresh horizon (once per socket); live triggers and polls share one.
        horizon_max_age_s = 0.0 if replay else EVENT_HORIZON_MAX_AGE_S
        async with self._lock:
            for _ in range(EVENT_CATCH_UP_MAX_BATCHES):
                events = await database_sync_to_async(event_list_after)(
                    tenant=self.access.tenant,
                    after_id=self.last_id,
                    app=self.app,
                    limit=EVENT_REPLAY_LIMIT + 1,
                    horizon_max_age_s=horizon_max_age_s,
                    at_least=at_least,
                )
                if replay and len(events) > EVENT_REPLAY_LIMIT:
                    await self.send_json({"type": "reset"})
                    self.last_id = await self.latest_id()
                    return
                replay = False
                for event in events[:EVENT_REPLAY_LIMIT]:
                    await self.send_json(
                        {
                            "type": "event",
                            "id": event.id,
                            "kind": event.kind,
                            "app_id": event.app_id,
                            "instance_id": str(event.instance_id) if event.instance_id else None,
                            "data": event.data,
                        }
                    )
                    self.last_id = event.id
                if len(events) <= EVENT_REPLAY_LIMIT:
                    return


def _instance_for(tenant, instance_id):
    return Instance.objects.for_tenant(tenant).select_related("host").filter(pk=instance_id).first()


class ConsoleConsumer(TenantScopedConsumer):
    """One instance's console: its guest log's output lines, backlog first, then live."""

    async def open(self, slug: str, instance_id) -> None:
        instance = await database_sync_to_async(_instance_for)(self.access.tenant, instance_id)
        if instance is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.instance_id = str(instance.pk)
        after = _query_int(self.scope, "after")
        self.last_seq = after if after is not None and after >= -1 else -1
        self.pending: list[list[dict]] | None = None  # live batches held back while a backlog request is out
        self.pending_exit: int | None = None
        self.request_sent_at = 0.0
        self.timeout_task: asyncio.Task | None = None
        self.state: str | None = None
        await self.join(console_group(self.instance_id))  # first: nothing written after the backlog is missed
        await self.join(instance_group(self.instance_id))
        await self.follow(instance)

    async def disconnect(self, code):
        await super().disconnect(code)
        if getattr(self, "timeout_task", None) is not None:
            self.timeout_task.cancel()

    async def tick(self) -> None:
        """A console waiting for its instance, or whose host did not answer, looks again."""
        if self.state in ("waiting", "unavailable") and self.pending is None:
            await self.refresh()

    async def refresh(self) -> None:
        instance = await database_sync_to_async(_instance_for)(self.access.tenant, self.instance_id)
        if instance is None:
            await self.send_status("gone", message="The instance no longer exists.")
            return
        await self.follow(instance)

    async def send_status(self, state: str, *, exit_code: int | None = None, message: str = "") -> None:
        self.state = state
        await self.send_json({"type": "status", "state": state, "exit_code": exit_code, "message": message})

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "gone")

    async def follow(self, instance: Instance) -> None:
        """Starts (or refreshes) the stream from what the Instance row says now."""
        self.instance = instance
        if self.finished:
            return
        if instance.status in WAITING:
            if self.state is None:
                await self.send_status("waiting", message=f"The instance is {instance.status}.")
            return
        if self.pending is None and (self.state != "live" or instance.status in INSTANCE_TERMINAL):
            await self.request_backlog()

    async def request_backlog(self) -> None:
        host = self.instance.host
        if host is None:
            await self.gone()
            return
        self.pending = []
        self.request_sent_at = time.time()
        request = {
            "type": "console.backlog.request",
            "instance_id": self.instance_id,
            "after": self.last_seq,
            "reply_to": self.channel_name,
            "sent_at": self.request_sent_at,
        }
        try:
            await self.channel_layer.send(console_channel(host.name), request)
        except ChannelFull:  # the host has not been reading its requests for a while
            self.pending = None
            await self.unavailable()
            return
        if self.timeout_task is not None:
            self.timeout_task.cancel()
        self.timeout_task = asyncio.create_task(self._backlog_timeout(self.request_sent_at))

    async def _backlog_timeout(self, sent_at: float) -> None:
        await asyncio.sleep(BACKLOG_TIMEOUT_S)
        if self.pending is not None and self.request_sent_at == sent_at and not self.finished:
            self.pending = None
            await self.unavailable()

    async def unavailable(self) -> None:
        """The host did not answer: gone if the row says the instance ended, else try again."""
        instance = await database_sync_to_async(_instance_for)(self.access.tenant, self.instance_id)
        if instance is None or instance.status in INSTANCE_TERMINAL or instance.host_id is None:
            await self.gone()
            return
        self.instance = instance
        if self.state != "unavailable":
            message = "The host of this instance does not answer; retrying."
            await self.send_status("unavailable", message=message)

    async def gone(self) -> None:
        instance = await database_sync_to_async(_instance_for)(self.access.tenant, self.instance_id)
        instance = instance or self.instance
        message = instance.failure_reason or "The console of this instance is not available."
        if instance.console_tail:
            message += "\n" + instance.console_tail
        if instance.status in INSTANCE_TERMINAL and instance.exit_code is not None:
            await self.send_status("exited", exit_code=instance.exit_code, message=message)
        else:
            await self.send_status("gone", message=message)

    async def send_lines(self, lines: list[dict]) -> None:
        fresh = [line for line in lines if line["seq"] > self.last_seq]
        if fresh:
            await self.send_json({"type": "lines", "lines": fresh})
            self.last_seq = fresh[-1]["seq"]

    # -- messages from the console agent --------------------------------------------------------

    async def console_backlog(self, message):
        if self.pending is None or self.finished:
            return  # an answer to a request given up on
        if not message.get("found"):
            self.pending = None
            await self.gone()
            return
        truncated = message.get("truncated_first_seq")
        if truncated is not None and truncated > self.last_seq + 1:
            await self.send_json({"type": "truncated", "first_seq": truncated})
            self.last_seq = truncated - 1
        await self.send_lines(message["lines"])
        pending, self.pending = self.pending, None
        exit_code = message.get("exit_code")
        if exit_code is None:
            exit_code = self.pending_exit
        if self.state != "live" and exit_code is None:
            await self.send_status("live")
        await self.console_lines({"lines": [line for batch in pending for line in batch]})
        if exit_code is not None:
            await self.send_status("exited", exit_code=exit_code)
        elif self.instance.status in INSTANCE_TERMINAL:
            await self.gone()  # the VM ended without an exit record

    async def console_lines(self, message):
        lines = message["lines"]
        if self.finished or not lines:
            return
        if self.pending is not None:
            if sum(len(batch) for batch in self.pending) < PENDING_MAX_LINES:
                self.pending.append(lines)
            return
        if self.state == "waiting":
            await self.start_running()  # the instance runs, whatever the row said when it was read
            return
        if self.state != "live":
            return  # unavailable: the next backlog holds these lines
        fresh = [line for line in lines if line["seq"] > self.last_seq]
        if fresh and fresh[0]["seq"] > self.last_seq + 1:
            await self.request_backlog()  # a batch went missing: the host's log has it
            if self.pending is not None:
                self.pending.append(lines)
            return
        await self.send_lines(fresh)

    async def console_exit(self, message):
        if self.finished:
            return
        if self.pending is not None:
            self.pending_exit = message["exit_code"]
            return
        await self.send_status("exited", exit_code=message["exit_code"])

    async def start_running(self) -> None:
        """Live lines came while waiting: their host has the log, so the backlog is asked for
        even when the row has not caught up yet (its status message may have been lost)."""
        instance = await database_sync_to_async(_instance_for)(self.access.tenant, self.instance_id)
        if instance is None or instance.host_id is None:
            return
        self.instance = instance
        await self.request_backlog()

    async def portal_event(self, message):
        """The instance changed: start when it runs, settle the end when it stopped."""
        if not self.finished:
            await self.refresh()


class ExecConsumer(TenantScopedConsumer):
    """A shell in one running instance (``/ws/t/<slug>/instances/<uuid>/exec/?rows=&cols=``): see
    the contract above; the shell itself runs through the host's exec agent (vmworker.exec_agent)."""

    no_access_message = "Sign in (or send an API token) with access to this tenant to open a shell."

    async def open(self, slug: str, instance_id) -> None:
        self.session_id = None
        self.ended = False
        self.received = 0  # the host's output offset passed to the client (cumulative, lost messages too)
        self.delivered = 0  # output bytes sent to the client
        self.client_acked = 0  # of those, what the client says it has written to its terminal
        self.acked = 0  # the offset acked to the host
        self.opened = False
        try:
            instance, self.session_id = await database_sync_to_async(exec_shell_start)(
                access=self.access, instance_id=instance_id
            )
        except ExecRefused as exc:
            await self.fail(CLOSE_REFUSED, str(exc))
            return
        except InstanceNotFound:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        except InstanceNotRunning as exc:
            await self.fail(CLOSE_NOT_RUNNING, str(exc))
            return
        self.agent = exec_channel(instance.host.name)
        request = {
            "type": "exec.open",
            "session": self.session_id,
            "instance_id": str(instance.pk),
            "tenant": str(instance.tenant_id),
            "reply_to": self.channel_name,
            "rows": _dimension(_query_int(self.scope, "rows"), 24),
            "cols": _dimension(_query_int(self.scope, "cols"), 80),
            "tty": True,
            "command": None,
            "sent_at": time.time(),
        }
        try:
            await self.channel_layer.send(self.agent, request)
        except ChannelFull:
            await self.fail(CLOSE_SHELL_FAILED, "The instance's host does not answer.")
            return
        self.open_timeout = asyncio.create_task(self._open_timeout())

    async def fail(self, code: int, message: str) -> None:
        await self.send_json({"type": "error", "message": message})
        await self.refuse(code)

    async def _open_timeout(self) -> None:
        await asyncio.sleep(settings.EXEC_OPEN_TIMEOUT_S)
        if not self.opened and not self.refused:
            await self.to_agent({"type": "exec.close"})
            await self.fail(CLOSE_SHELL_FAILED, "The instance's host did not open a shell in time.")

    async def to_agent(self, message: dict) -> None:
        try:
            await self.channel_layer.send(self.agent, message | {"session": self.session_id})
        except ChannelFull:
            logger.warning("consumers.exec_agent_full", extra={"session": self.session_id})

    async def disconnect(self, code):
        await super().disconnect(code)
        if getattr(self, "open_timeout", None) is not None:
            self.open_timeout.cancel()
        if getattr(self, "session_id", None) and getattr(self, "agent", None) and not self.ended:
            self.ended = True
            await self.to_agent({"type": "exec.close"})

    async def tick(self) -> None:
        """The role may have changed (a developer made viewer loses the shell); the agent hears
        from us every poll, so it knows the client is still there."""
        if self.ended or self.session_id is None:
            return
        access = await database_sync_to_async(stream_access_now)(self.guard.credentials)
        if access is None or not access.allows(TenantRole.DEVELOPER):
            await self.fail(CLOSE_REFUSED, "You no longer have the developer role in this tenant.")
            return
        await self.ack(force=True)

    async def ack(self, *, force: bool = False) -> None:
        """Acks to the host what the client has written (bytes lost on the way, never sent to it,
        count as acked): the output still unread by the client is never more than one window."""
        offset = self.received - (self.delivered - self.client_acked)
        if force or offset - self.acked >= ACK_BYTES:
            self.acked = max(self.acked, offset)
            await self.to_agent({"type": "exec.ack", "offset": self.acked})

    async def client_ack(self, written) -> None:
        if isinstance(written, int) and not isinstance(written, bool) and written > self.client_acked:
            self.client_acked = min(written, self.delivered)
            await self.ack()

    # -- from the browser or client ---------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = json.loads(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if self.refused or self.session_id is None:
            return
        if isinstance(content, dict) and content.get("type") == "ack":
            if not self.within_rate("acks", ACKS_PER_S, ACKS_BURST):
                await self.fail(CLOSE_TOO_MANY_STREAMS, f"Too many acks: at most {ACKS_PER_S} a second.")
            elif not self.ended:
                await self.client_ack(content.get("bytes"))
            return
        if not self.within_rate():
            await self.fail(CLOSE_TOO_MANY_STREAMS, f"Too many messages: at most {MESSAGES_PER_S} a second.")
            return
        if not isinstance(content, dict):
            await self.fail(CLOSE_BAD_MESSAGE, "Messages are JSON objects: input, resize or ping.")
            return
        kind = content.get("type")
        if kind == "input" and isinstance(content.get("data"), str):
            data = content["data"].encode("utf-8", "surrogatepass")
            if len(data) > INPUT_MAX_BYTES:
                await self.fail(CLOSE_BAD_MESSAGE, f"An input message holds at most {INPUT_MAX_BYTES} bytes.")
                return
            if data and not self.ended:
                await self.to_agent({"type": "exec.input", "data": base64.b64encode(data).decode()})
        elif kind == "resize" and _is_dimension(content.get("rows")) and _is_dimension(content.get("cols")):
            if not self.ended:
                await self.to_agent({"type": "exec.resize", "rows": content["rows"], "cols": content["cols"]})
        elif kind != "ping":
            await self.fail(CLOSE_BAD_MESSAGE, "Messages are input {data}, resize {rows, cols}, ack {bytes} or ping.")

    # -- from the exec agent ----------------------------------------------------------------------

    def within_rate(self, bucket: str = "messages", per_s: float = MESSAGES_PER_S, burst: int = MESSAGES_BURST) -> bool:
        """A token bucket per socket: the host's agent channel is shared by every tenant's shells
        on that host, and one socket's flood must not fill it for the others."""
        now = time.monotonic()
        allowance, at = getattr(self, "buckets", {}).get(bucket, (float(burst), now))
        allowance = min(float(burst), allowance + (now - at) * per_s)
        self.buckets = getattr(self, "buckets", {}) | {bucket: (allowance - 1, now)}
        return allowance >= 1

    def _ours(self, message) -> bool:
        return message.get("session") == self.session_id and not self.ended

    async def exec_opened(self, message):
        if self._ours(message):
            self.opened = True
            await self.send_json({"type": "opened", "session": self.session_id})

    async def exec_output(self, message):
        if not self._ours(message):
            return
        data = message.get("data", "")
        offset = message.get("offset", 0)
        size = len(base64.b64decode(data)) if data else 0
        await self.send_json({"type": "output", "data": data})
        self.received = max(self.received, offset + size)
        self.delivered += size

    async def exec_exit(self, message):
        if self._ours(message):
            self.ended = True
            await self.send_json({"type": "exit", "exit_code": message.get("exit_code")})
            await self.refuse(1000)

    async def exec_error(self, message):
        if self._ours(message):
            self.ended = True
            await self.fail(CLOSE_SHELL_FAILED, str(message.get("message", "The shell ended.")))


def _is_dimension(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= SHELL_DIMENSION_MAX


def _dimension(value, default: int) -> int:
    return value if _is_dimension(value) else default
