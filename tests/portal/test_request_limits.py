"""RequestBodyLimit: a body above the cap is answered 413 before any view runs, whether its
length is declared or it arrives in chunks; the wrapped app never reads past the cap."""

import asyncio
import json

import pytest
from django.core.asgi import get_asgi_application

from portal.models import App
from portal.request_limits import RequestBodyLimit

LIMIT = 1000


def http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": headers}


def run(app, scope: dict, chunks: list[bytes]) -> tuple[int, dict, bytes]:
    """(status, headers, body) of the answer to a body sent as these chunks."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client waits for the answer

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


class RecordingApp:
    """An ASGI app that reads the whole body and answers 200 with its size."""

    def __init__(self):
        self.read_bytes = 0
        self.saw_disconnect = False

    async def __call__(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect = True
                return
            self.read_bytes += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read_bytes).encode()})


def test_a_declared_length_over_the_cap_is_refused_without_calling_the_app():
    inner = RecordingApp()
    status, headers, body = run(
        RequestBodyLimit(inner, max_body_bytes=LIMIT),
        http_scope("/v2/apps", [(b"content-length", b"1001")]),
        [b"x" * 1001],
    )
    assert status == 413 and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"message": "Request body too large: this platform accepts at most 1000 bytes."}
    assert inner.read_bytes == 0


def test_a_chunked_body_is_cut_at_the_cap_and_the_app_sees_a_disconnect():
    inner = RecordingApp()
    status, _, body = run(RequestBodyLimit(inner, max_body_bytes=LIMIT), http_scope("/api/v1/x/", []), [b"x" * 400] * 3)
    assert status == 413 and json.loads(body)["detail"].startswith("Request body too large")
    assert inner.saw_disconnect and inner.read_bytes == 800  # the third chunk (past the cap) never reached it


def test_a_body_at_the_cap_passes_and_pages_get_plain_text():
    status, _, body = run(
        RequestBodyLimit(RecordingApp(), max_body_bytes=LIMIT), http_scope("/login/", []), [b"x" * 500] * 2
    )
    assert (status, body) == (200, b"1000")
    status, headers, _ = run(
        RequestBodyLimit(RecordingApp(), max_body_bytes=LIMIT),
        http_scope("/login/", [(b"content-length", b"5000")]),
        [b"x" * 5000],
    )
    assert status == 413 and headers[b"content-type"].startswith(b"text/plain")


@pytest.mark.django_db(transaction=True)
def test_django_runs_no_view_for_a_chunked_body_over_the_cap():
    body = json.dumps({"id": "/big", "cmd": "sleep 1", "env": {"BLOB": "x" * 4000}}).encode()
    chunks = [body[i : i + 256] for i in range(0, len(body), 256)]
    scope = http_scope("/v2/apps", [(b"content-type", b"application/json")]) | {
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "scheme": "http",
    }
    status, _, answer = run(RequestBodyLimit(get_asgi_application(), max_body_bytes=LIMIT), scope, chunks)
    assert status == 413, answer
    assert not App.objects.exists()
