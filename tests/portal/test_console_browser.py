"""live.js's console in a real browser (chromium through Playwright) against the real stack
(daphne, Redis, PostgreSQL) and a real console agent tailing a guest.log in the protocol's format:
reconnecting and resuming after a dropped socket, a host that does not answer, and guest text
that tries to drive the terminal. (The VM end to end is in test_console_live.py.)"""

# ruff: noqa: F401, F811 (the fixtures come from test_consumers)
from __future__ import annotations

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from portal.choices import InstanceStatus
from portal.models import Instance
from tests.portal.test_consumers import (
    agent,
    app,
    append,
    guest_log,
    host,
    host_logs,
    instance,
    session_cookie,
    set_status,
    start_agent,
    viewer,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WAIT_MS = 30000
OPEN_CONSOLE = """url => {
    window.seen = [];
    const element = document.createElement("div");
    element.className = "console";
    element.id = "test-console";
    element.dataset.consoleUrl = url;
    element.addEventListener("hyperlive:lines", e => e.detail.lines.forEach(l => window.seen.push(l.seq)));
    document.querySelector("main").appendChild(element);
    element.scrollIntoView();  // xterm.js renders only what is on screen
    HyperLive.attachConsoles(document);
}"""
SEEN_AT_LEAST = "seq => window.seen.length > 0 && window.seen[window.seen.length - 1] >= seq"
STATE_IS = "state => document.querySelector('#test-console').dataset.consoleState === state"
TERMINAL_ROWS = """() => {
    const buffer = document.querySelector("#test-console").hyperLiveConsole.view.terminal.buffer.active;
    const rows = [];
    for (let i = 0; i < buffer.length; i++) rows.push(buffer.getLine(i).translateToString(true));
    return rows.filter(row => row !== "");
}"""


def open_console(page, live_stack, user, tenant, console_of) -> list[str]:
    """Opens the console of instance console_of in a page of the portal; returns the list that
    collects the URLs of the console WebSockets the page opens."""
    sockets: list[str] = []
    page.on("websocket", lambda socket: "/console/" in socket.url and sockets.append(socket.url))
    session = session_cookie(user).decode().partition("=")[2]
    page.context.add_cookies([{"name": "sessionid", "value": session, "url": live_stack.url}])
    page.goto(f"{live_stack.url}/t/{tenant.slug}/apps/")
    page.evaluate(OPEN_CONSOLE, f"/ws/t/{tenant.slug}/instances/{console_of.pk}/console/")
    page.wait_for_function("() => document.querySelector('#test-console').hyperLiveConsole.view !== null")
    return sockets


def wait_for_state(page, state: str, instance) -> None:
    try:
        page.wait_for_function(STATE_IS, arg=state, timeout=WAIT_MS)
    except PlaywrightTimeout:
        shown = page.locator("#test-console").get_attribute("data-console-state")
        note = page.locator("#test-console .console-note").inner_text()
        row = Instance.objects.filter(pk=instance.pk).values("status", "host__name", "failure_reason").first()
        raise AssertionError(f"console not {state}: {shown!r} ({note!r}); instance {row}") from None


@pytest.fixture
def open_instance_console(live_stack, page, tenant, viewer, instance):
    """Opens the instance's console in a page of the portal, as a viewer; returns open_console's list."""
    return lambda: open_console(page, live_stack, viewer, tenant, instance)


@pytest.fixture
def running_log(instance, host_logs):
    """The guest.log of instance, which the database says runs."""
    set_status(instance, InstanceStatus.RUNNING)
    return guest_log(host_logs, instance)


def test_a_dropped_socket_reconnects_and_resumes_without_duplicates_or_gaps(
    page, open_instance_console, agent, running_log
):
    log = running_log
    append(log, *(f"out line {n}" for n in range(10)))
    sockets = open_instance_console()
    page.wait_for_function(SEEN_AT_LEAST, arg=9, timeout=WAIT_MS)
    total = 10
    for _ in range(3):
        page.evaluate("() => document.querySelector('#test-console').hyperLiveConsole.drop()")
        append(log, *(f"out line {n}" for n in range(total, total + 5)))  # written while it reconnects
        total += 5
        page.wait_for_function(SEEN_AT_LEAST, arg=total - 1, timeout=WAIT_MS)

    assert page.evaluate("window.seen") == list(range(total))
    assert page.evaluate(TERMINAL_ROWS) == [f"line {n}" for n in range(total)]
    assert len(sockets) == 4 and all("after=" in url for url in sockets[1:])
    assert page.locator("#test-console").get_attribute("data-console-state") == "live"


def test_a_console_whose_host_does_not_answer_shows_unavailable_and_recovers(
    page, open_instance_console, instance, host, host_logs, running_log
):
    append(running_log, "out zero", "out one")
    open_instance_console()
    wait_for_state(page, "unavailable", instance)
    assert "retrying" in page.locator("#test-console .console-note").inner_text()
    page.evaluate("() => document.querySelector('#test-console').hyperLiveConsole.drop()")  # a drop meanwhile
    wait_for_state(page, "unavailable", instance)

    agent = start_agent(host, host_logs)  # the host answers again
    try:
        wait_for_state(page, "live", instance)
        page.wait_for_function(SEEN_AT_LEAST, arg=1, timeout=WAIT_MS)
    finally:
        agent.stop()
    assert page.evaluate("window.seen") == [0, 1]
    assert page.locator("#test-console .console-note").inner_text() == ""


def test_guest_text_cannot_drive_the_terminal_or_fake_the_portals_notes(
    page, open_instance_console, instance, agent, running_log
):
    log = running_log
    append(
        log,
        "out before",
        "out \x1b[2J\x1b[Hcleared",  # clear the screen, cursor home
        "out \x1b]8;;http://evil.example/\x07click\x1b]8;;\x07",  # an OSC 8 link
        "out \x1b]0;title\x07\x1b[?1049h\x1b[5Aup",  # window title, alternate screen, cursor up
        "out [exited with code 0]",  # the portal's note, faked
        "out \x1b[31mred\x1b[0m plain",
        "out \x1b[32mno reset",
        "out after",
    )
    open_instance_console()
    page.wait_for_function(SEEN_AT_LEAST, arg=7, timeout=WAIT_MS)

    rows = ["before", "cleared", "click", "up", "[exited with code 0]", "red plain", "no reset", "after"]
    assert page.evaluate(TERMINAL_ROWS) == rows
    assert page.evaluate("HyperLive.terminalText('\\x1b]8;;http://evil.example/\\x07click\\x1b]8;;\\x07')") == "click"
    colours = page.evaluate(
        """() => {
            const buffer = document.querySelector("#test-console").hyperLiveConsole.view.terminal.buffer.active;
            const cell = (row, column) => buffer.getLine(row).getCell(column);
            return {
                red: [cell(5, 0).isFgPalette(), cell(5, 0).getFgColor()],
                plain: cell(5, 4).isFgDefault(),
                nextLine: cell(7, 0).isFgDefault(),
            };
        }"""
    )
    assert colours == {"red": [True, 1], "plain": True, "nextLine": True}  # SGR kept, and reset per line
    assert page.locator("#test-console").get_attribute("data-console-state") == "live"
    assert page.locator("#test-console .console-note").inner_text() == ""

    append(log, "exit 0")
    wait_for_state(page, "exited", instance)
    assert page.locator("#test-console .console-note").inner_text() == "[exited with code 0]"
    assert page.evaluate(TERMINAL_ROWS) == rows  # the real note is beside the output, not in it
