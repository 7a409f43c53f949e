"""/v2/events frames: attached first, then the tenant's Event rows newer than the attach (the
database is the record), filtered by type, with heartbeats when idle."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from portal.api.marathon.event_stream import HEARTBEAT_FRAME, event_stream_frames
from portal.models import Event
from portal.stream_security import StreamCredentials, StreamGuard, lease_count
from tenants.choices import TenantRole
from tenants.services import api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db(transaction=True)


def parse_frame(frame: bytes) -> tuple[str, dict]:
    event_line, data_line, *_ = frame.decode().split("\n")
    assert event_line.startswith("event: ") and data_line.startswith("data: ")
    return event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


def record(tenant, kind: str, **data) -> Event:
    return Event.objects.create(tenant=tenant, kind=kind, data=data)


def collect(tenant, *, event_types=frozenset(), after_attach=(), count: int, keep_heartbeats: bool = False):
    """The first ``count`` frames (heartbeats left out unless asked for); ``after_attach`` runs
    once the stream has attached."""

    async def scenario():
        frames = event_stream_frames(
            tenant=tenant, event_types=event_types, remote_address="127.0.0.9", poll_s=0.01, heartbeat_s=0.2
        )
        received = [await anext(frames)]
        for make_event in after_attach:
            await sync_to_async(make_event)()
        while len(received) < count + (0 if keep_heartbeats else received.count(HEARTBEAT_FRAME)):
            received.append(await asyncio.wait_for(anext(frames), timeout=5))
        await frames.aclose()
        await sync_to_async(connections.close_all)()  # the stream's thread holds its own connection
        return received if keep_heartbeats else [frame for frame in received if frame != HEARTBEAT_FRAME]

    return asyncio.run(scenario())


def test_attached_first_then_only_new_events_of_the_tenant(tenant, other_tenant):
    record(tenant, "app_terminated_event", appId="/before-attach")
    frames = collect(
        tenant,
        after_attach=[
            lambda: record(other_tenant, "app_terminated_event", appId="/other-tenant"),
            lambda: record(tenant, "portal_internal_event"),  # not a Marathon type: clients would raise
            lambda: record(tenant, "app_terminated_event", appId="/web"),
        ],
        count=2,
    )
    kind, attached = parse_frame(frames[0])
    assert (kind, attached["eventType"]) == ("event_stream_attached", "event_stream_attached")
    assert attached["remoteAddress"] == "127.0.0.9"
    kind, data = parse_frame(frames[1])
    assert (kind, data["eventType"], data["appId"]) == ("app_terminated_event", "app_terminated_event", "/web")
    assert data["timestamp"].endswith("Z")


def test_event_type_filter(tenant):
    frames = collect(
        tenant,
        event_types=frozenset({"deployment_success"}),
        after_attach=[
            lambda: record(tenant, "app_terminated_event", appId="/web"),
            lambda: record(tenant, "deployment_success", id="d1", plan={}),
        ],
        count=1,
    )
    assert [parse_frame(frame)[0] for frame in frames] == ["deployment_success"]


def test_heartbeat_when_idle(tenant):
    frames = collect(tenant, count=2, keep_heartbeats=True)
    assert frames[1] == HEARTBEAT_FRAME


def test_a_stream_whose_access_is_lost_ends_and_releases_its_lease(tenant, member_of, settings):
    settings.STREAM_RECHECK_S = 0.05
    user = member_of(tenant, TenantRole.VIEWER)
    token, _key = api_token_create(user=user, name="events", tenant=tenant)
    guard = StreamGuard.open(StreamCredentials(user_id=user.pk, slug=tenant.slug, token_id=token.pk))

    async def scenario():
        frames = event_stream_frames(
            tenant=tenant, event_types=frozenset(), remote_address="127.0.0.9", poll_s=0.01, guard=guard
        )
        received = [await anext(frames)]
        await sync_to_async(api_token_revoke)(user=user, token=token)
        async for frame in frames:  # ends by itself (bounded by the test's timeout)
            received.append(frame)
        await sync_to_async(connections.close_all)()
        return received

    received = asyncio.run(scenario())
    assert parse_frame(received[0])[0] == "event_stream_attached"
    assert lease_count(user_id=user.pk) == 0
