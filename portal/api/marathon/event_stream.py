"""``GET /v2/events``: the tenant's Event rows as Server-Sent Events.

Contract: the stream opens with ``event_stream_attached``, then carries every Event row of the
tenant committed after the attach, polled from the database (the record; the Redis copy may be
dropped), in id order and gap-safe (portal.selectors.event_list_after: a row that commits after a
newer one is not skipped), limited to ``event_type`` when given and to the event types Marathon
clients know (marathon-python raises on any other). Each frame is ``event: <type>`` +
``data: <one-line JSON with eventType and timestamp>``; a comment line goes out when nothing
was sent for ``HEARTBEAT_S``, so clients with read timeouts keep the connection. The generator
is async: under ASGI it holds no thread while it waits.

The stream's ``StreamGuard`` (portal.stream_security: the re-check every stream kind uses) is
asked every STREAM_RECHECK_S whether the token or session, the user and the membership still
allow it: when not (or when the user's lease was lost over the cap), the stream ends. Its lease
is released when the stream ends or the client goes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from portal.api.marathon.render import marathon_timestamp
from portal.models import Event
from portal.selectors import event_latest_id, event_list_after
from portal.stream_security import StreamGuard, StreamVerdict

EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
POLL_S = 0.5
HEARTBEAT_S = 10.0
HEARTBEAT_FRAME = b":\n\n"
BATCH_SIZE = 200
# The event types marathon-python 0.13.0 parses (marathon.models.events.EventFactory).
CLIENT_EVENT_TYPES = frozenset(
    {
        "api_post_event",
        "status_update_event",
        "framework_message_event",
        "subscribe_event",
        "unsubscribe_event",
        "add_health_check_event",
        "remove_health_check_event",
        "failed_health_check_event",
        "health_status_changed_event",
        "unhealthy_task_kill_event",
        "group_change_success",
        "group_change_failed",
        "deployment_success",
        "deployment_failed",
        "deployment_info",
        "deployment_step_success",
        "deployment_step_failure",
        "event_stream_attached",
        "event_stream_detached",
        "app_terminated_event",
        "instance_changed_event",
        "unknown_instance_terminated_event",
        "unhealthy_instance_kill_event",
        "instance_health_changed_event",
        "pod_created_event",
        "pod_updated_event",
        "pod_deleted_event",
    }
)


def sse_frame(event_type: str, data: dict) -> bytes:
    return f"event: {event_type}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _latest_event_id(tenant) -> int:
    return event_latest_id(tenant=tenant)


def _events_after(tenant, after_id: int, kinds: frozenset[str]) -> list[Event]:
    return event_list_after(tenant=tenant, after_id=after_id, kinds=kinds, limit=BATCH_SIZE)


def _event_data(event: Event) -> dict:
    return {"eventType": event.kind, "timestamp": marathon_timestamp(event.created_at), **event.data}


async def event_stream_frames(
    *,
    tenant,
    event_types: frozenset[str],
    remote_address: str,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    guard: StreamGuard | None = None,
) -> AsyncIterator[bytes]:
    try:
        async for frame in _frames(
            tenant=tenant,
            event_types=event_types,
            remote_address=remote_address,
            poll_s=poll_s,
            heartbeat_s=heartbeat_s,
            guard=guard,
        ):
            yield frame
    finally:
        if guard is not None:
            # Also when the client went (the response task is cancelled): shielded, so the lease
            # is released now rather than at its expiry.
            await asyncio.shield(asyncio.to_thread(guard.close))


async def _frames(*, tenant, event_types, remote_address, poll_s, heartbeat_s, guard) -> AsyncIterator[bytes]:
    kinds = CLIENT_EVENT_TYPES & event_types if event_types else CLIENT_EVENT_TYPES
    last_id = await sync_to_async(_latest_event_id)(tenant)
    if "event_stream_attached" in kinds:
        attached = {
            "remoteAddress": remote_address,
            "eventType": "event_stream_attached",
            "timestamp": marathon_timestamp(timezone.now()),
        }
        yield sse_frame("event_stream_attached", attached)
    last_sent = checked_at = time.monotonic()
    while True:
        if guard is not None and time.monotonic() - checked_at >= settings.STREAM_RECHECK_S:
            if await sync_to_async(guard.recheck)() is not StreamVerdict.ALLOWED:
                return
            checked_at = time.monotonic()
        events = await sync_to_async(_events_after)(tenant, last_id, kinds)
        for event in events:
            last_id = event.id
            yield sse_frame(event.kind, _event_data(event))
            last_sent = time.monotonic()
        if time.monotonic() - last_sent >= heartbeat_s:
            yield HEARTBEAT_FRAME
            last_sent = time.monotonic()
        if len(events) < BATCH_SIZE:
            await asyncio.sleep(poll_s)
