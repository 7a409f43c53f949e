"""WebSocket routes (the contract is in portal/consumers.py)."""

from django.urls import path

from portal.consumers import ConsoleConsumer, EventStreamConsumer, ExecConsumer

websocket_urlpatterns = [
    path("ws/t/<slug:slug>/", EventStreamConsumer.as_asgi()),
    path("ws/t/<slug:slug>/apps/<int:app_id>/", EventStreamConsumer.as_asgi()),
    path("ws/t/<slug:slug>/instances/<uuid:instance_id>/console/", ConsoleConsumer.as_asgi()),
    path("ws/t/<slug:slug>/instances/<uuid:instance_id>/exec/", ExecConsumer.as_asgi()),
]
