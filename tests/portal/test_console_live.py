"""The console end to end: a real HyperVM (TCG) prints numbered lines into its guest.log on a
real host worker, whose console agent streams them over the real Redis channel layer to the
console consumer — in process, and through daphne to live.js in a real browser."""

from __future__ import annotations

import re

import pytest

from portal.choices import INSTANCE_UP
from portal.marathon import parse_app_definition
from portal.models import Instance
from portal.services.apps import app_create
from tests.portal.test_console_browser import OPEN_CONSOLE, SEEN_AT_LEAST
from tests.portal.test_consumers import Socket, lines_of, run, session_cookie
from tests.portal.test_pipeline import access, wait_until  # noqa: F401 (fixtures)
from tests.support.browser import screenshot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
LINE_COUNT = 60
INTERVAL_S = 0.25


def counter_app(test_images, *, app_id: str, count: int = LINE_COUNT, interval_s: float = INTERVAL_S) -> dict:
    """Prints "console line <n>" for n = 0..count-1, one per interval, then idles."""
    script = (
        f'i=0; while [ $i -lt {count} ]; do echo "console line $i"; i=$((i+1)); sleep {interval_s}; done;'
        " exec sleep 3600"
    )
    return {
        "id": app_id,
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "cmd": script,
        "container": {"docker": {"image": test_images["httpd"].reference}},
        "portDefinitions": [],  # no host port: other test sessions on this machine allocate from the same range
    }


def deploy_counter(access, test_images, host_worker, app_id: str) -> Instance:  # noqa: F811
    app = app_create(access=access, definition=parse_app_definition(counter_app(test_images, app_id=app_id))).app
    instance = wait_until("the counter runs", lambda: Instance.objects.filter(app=app, status__in=INSTANCE_UP).first())
    guest_log = host_worker.state_dir / "instances" / str(instance.pk) / "guest.log"
    wait_until("a few lines in the guest log", lambda: guest_log.read_bytes().count(b"\nout ") >= 5, 60, 0.1)
    return instance


def test_backlog_then_live_lines_and_a_resume_without_duplicates_or_gaps(access, one_host, test_images):  # noqa: F811
    instance = deploy_counter(access, test_images, one_host, "/counter")
    cookie = session_cookie(access.actor)
    path = f"/ws/t/{access.tenant.slug}/instances/{instance.pk}/console/"
    resume_at = LINE_COUNT // 2

    async def scenario():
        async with Socket(cookie, path) as socket:
            first = await socket.receive_until(lambda m: resume_at in lines_of([m]), limit=500)
        last = max(lines_of(first))
        async with Socket(cookie, f"{path}?after={last}") as socket:
            second = await socket.receive_until(lambda m: LINE_COUNT - 1 in lines_of([m]), limit=500)
        return first, last, second

    first, last, second = run(scenario())
    backlog, status, *live = first
    assert backlog["type"] == "lines" and len(backlog["lines"]) >= 5  # printed before the socket opened
    assert status == {"type": "status", "state": "live", "exit_code": None, "message": ""}
    assert lines_of(live)  # and more came live after it
    assert lines_of(first) == list(range(last + 1))
    assert lines_of(second) == list(range(last + 1, LINE_COUNT))
    texts = [line["text"] for m in first + second if m["type"] == "lines" for line in m["lines"]]
    assert texts == [f"console line {n}" for n in range(LINE_COUNT)]


@pytest.mark.browser
def test_a_browser_console_shows_the_lines_and_a_reload_loses_none(live_stack, page, access, one_host, test_images):  # noqa: F811
    instance = deploy_counter(access, test_images, one_host, "/browser-counter")
    page.goto(live_stack.url + "/login/")
    page.fill("#id_username", access.actor.username)
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/.*"))
    console_url = f"/ws/t/{access.tenant.slug}/instances/{instance.pk}/console/"

    def open_console():
        page.evaluate(OPEN_CONSOLE, console_url)

    open_console()
    page.wait_for_function(SEEN_AT_LEAST, arg=20, timeout=60000)
    assert page.locator("#test-console .xterm-rows").inner_text().count("console line") > 0
    screenshot(page, "console-live")
    # The network drops mid-stream: live.js reconnects with after=<last seq> and loses nothing.
    page.evaluate("() => document.querySelector('#test-console').hyperLiveConsole.drop()")
    page.wait_for_function(SEEN_AT_LEAST, arg=30, timeout=60000)
    seen = page.evaluate("window.seen")
    assert seen == list(range(len(seen)))

    page.reload()
    open_console()
    page.wait_for_function(SEEN_AT_LEAST, arg=LINE_COUNT - 1, timeout=60000)
    assert page.evaluate("window.seen") == list(range(LINE_COUNT))
    assert page.locator("#test-console").get_attribute("data-console-state") == "live"
