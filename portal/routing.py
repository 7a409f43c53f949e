# WebSocket routes; the consumers arrive with the browser-portal issue.
websocket_urlpatterns: list = []
