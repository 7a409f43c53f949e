"""Request bodies capped before any view runs (issue 9).

Contract: ``RequestBodyLimit(app, max_body_bytes=n)`` wraps an ASGI app's "http" scope. A
request that declares a ``Content-Length`` above ``n`` is answered 413 at once and the app is
never called. A body without a declared length (chunked) is counted chunk by chunk as the app
reads it; when the count passes ``n`` the app is told the client left (``http.disconnect``), so
Django's handler drops what it spooled and runs no view, and the 413 is sent here. Nothing is
buffered here beyond the chunk in hand. API paths (``/v2/``, ``/api/``) get JSON in their own
error shape (Marathon's ``message``, DRF's ``detail``); pages get a plain-text answer.

The web server itself may still hold a whole request before the app sees it (daphne/Twisted
keeps the body in a temporary file); a front proxy's own body limit bounds that part.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)

MARATHON_PREFIX = "/v2/"
REST_PREFIX = "/api/"


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _refusal(path: str, max_body_bytes: int) -> tuple[bytes, bytes]:
    """(content type, body) of the 413 for this path."""
    message = f"Request body too large: this platform accepts at most {max_body_bytes} bytes."
    if path.startswith(MARATHON_PREFIX) or path == MARATHON_PREFIX.rstrip("/"):
        return b"application/json", json.dumps({"message": message}).encode()
    if path.startswith(REST_PREFIX):
        return b"application/json", json.dumps({"detail": message, "message": message}).encode()
    return b"text/plain; charset=utf-8", message.encode()


class RequestBodyLimit:
    def __init__(self, app, *, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, send, received_bytes=declared)
            return

        received_bytes = 0
        over_limit = False
        response_started = False

        async def counting_receive():
            nonlocal received_bytes, over_limit
            if over_limit:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > self.max_body_bytes:
                    over_limit = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if over_limit and not response_started:
            await self._refuse(scope, send, received_bytes=received_bytes)

    async def _refuse(self, scope, send, *, received_bytes: int) -> None:
        path = scope.get("path", "")
        logger.info(
            "request.body_too_large",
            extra={"path": path, "received_bytes": received_bytes, "max_body_bytes": self.max_body_bytes},
        )
        content_type, body = _refusal(path, self.max_body_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
