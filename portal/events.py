"""Events: the per-tenant Event row is the record; after commit a copy goes to the Channels
groups of the tenant, the app and the instance (Redis is at-most-once: never the only copy)."""

import logging

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from portal.models import Event

logger = logging.getLogger(__name__)


def tenant_group(tenant_id: int) -> str:
    return f"tenant.{tenant_id}"


def app_group(app_id: int) -> str:
    return f"app.{app_id}"


def instance_group(instance_id) -> str:
    return f"instance.{instance_id}"


def marathon_timestamp(moment=None) -> str:
    moment = moment or timezone.now()
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_publish(*, tenant, kind: str, data: dict, app=None, instance=None) -> Event:
    data = {"eventType": kind, "timestamp": marathon_timestamp(), **data}
    event = Event.objects.create(tenant=tenant, app=app, instance=instance, kind=kind, data=data)
    groups = [tenant_group(tenant.pk)]
    if app is not None:
        groups.append(app_group(app.pk))
    if instance is not None:
        groups.append(instance_group(instance.pk))
    message = {"type": "portal.event", "event_id": event.pk, "kind": kind, "data": data}
    transaction.on_commit(lambda: _send(groups, message))
    return event


def _send(groups: list[str], message: dict) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # the live copy is best-effort; the Event row is the record
        logger.warning("events.send_failed", extra={"event_id": message["event_id"]}, exc_info=True)
