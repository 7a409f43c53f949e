"""Exec end to end on a real HyperVM (TCG) under a real host worker (its exec agent), daphne,
Redis and PostgreSQL: the app page's Shell in Debian's chromium (Playwright) types into the
instance's container, resizes, interrupts, exits with a code, and the session is in the audit
log (page and API); a viewer is refused in the browser and on the WebSocket; the REST one-shot
returns the command's output and exit code."""

# ruff: noqa: F811 (fixtures from test_pipeline)
from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from portal.models import Instance
from tenants.choices import AuditAction, TenantRole
from tenants.models import AuditEntry
from tenants.services import api_token_create
from tests.portal.test_console_live import deploy_counter
from tests.portal.test_pipeline import access  # noqa: F401 (fixtures)
from tests.support.browser import screenshot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WAIT_MS = 60000
TERMINAL_TEXT = """() => {
    const buffer = HyperShell.current().term.buffer.active;
    const rows = [];
    for (let i = 0; i < buffer.length; i++) rows.push(buffer.getLine(i).translateToString(true));
    return rows.join("\\n").replace(/\\s+$/, "");  // the screen's empty rows are not text
}"""
STATE = "document.querySelector('[data-shell-status]').dataset.state"
SHELL_STATE = f"() => {STATE}"
# The refusal a page script gets from the socket itself (not only what the dialog shows).
RAW_SOCKET = """url => new Promise(resolve => {
    const socket = new WebSocket(url);
    const messages = [];
    socket.onmessage = event => messages.push(JSON.parse(event.data));
    socket.onclose = event => resolve({code: event.code, messages});
})"""


def log_in(page, url, user) -> None:
    page.goto(url + "/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/t/.*"))


def open_shell(page, url, access, instance) -> None:
    page.goto(f"{url}/t/{access.tenant.slug}/apps/{instance.app_id}/")
    page.click(f"tr[data-instance='{instance.pk}'] button[data-shell-url]")
    page.wait_for_function(f"() => {STATE} !== 'connecting'", timeout=WAIT_MS)


def terminal_shows(page, pattern: str, *, after: int = 0) -> re.Match:
    """Waits until the terminal's text (from offset ``after``) matches ``pattern``."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        text = page.evaluate(TERMINAL_TEXT)
        match = re.search(pattern, text[after:])
        if match:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"the terminal never showed {pattern!r}:\n{text}")
        time.sleep(0.2)


def type_line(page, text: str) -> int:
    """Types a command and Enter; returns where the terminal's text stood before it."""
    before = len(page.evaluate(TERMINAL_TEXT))
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    return before


def rest_exec(url, slug, instance, key, body) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/api/v1/tenants/{slug}/instances/{instance.pk}/exec/",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_a_shell_on_a_real_vm_from_the_app_page_and_a_command_from_the_api(
    live_stack, page, chromium, access, one_host, test_images, member_of
):
    instance = deploy_counter(access, test_images, one_host, "/shell-app")
    log_in(page, live_stack.url, access.actor)
    open_shell(page, live_stack.url, access, instance)
    assert page.evaluate(SHELL_STATE) == "open", page.locator("[data-shell-status]").inner_text()

    start = type_line(page, "echo host=$HOSTNAME; ls /")
    hostname = terminal_shows(page, r"\nhost=(\S+)", after=start).group(1)
    terminal_shows(page, r"\bbin\b.*\bproc\b", after=start)
    start = type_line(page, "stty size")
    before = terminal_shows(page, r"\n(\d+) (\d+)\s", after=start).groups()
    page.set_viewport_size({"width": 700, "height": 500})  # the dialog and its terminal shrink
    page.wait_for_function("size => HyperShell.current().term.cols !== size", arg=int(before[1]), timeout=WAIT_MS)
    start = type_line(page, "stty size")
    after = terminal_shows(page, r"\n(\d+) (\d+)\s", after=start).groups()
    terminal_cols = page.evaluate("() => HyperShell.current().term.cols")
    # Output past the guest's window (seq prints 108,894 bytes) goes on only as the terminal acks it.
    type_line(page, "seq 1 20000; echo seq-$((1+1))-done")
    terminal_shows(page, r"\n19999\s+20000\s+seq-2-done")
    start = type_line(page, "sleep 100; echo slept")
    time.sleep(1.5)
    interrupted_at = time.monotonic()
    page.keyboard.press("Control+C")
    type_line(page, "echo after-interrupt")
    terminal_shows(page, r"\nafter-interrupt", after=start)
    interrupt_s = time.monotonic() - interrupted_at
    screenshot(page, "exec-shell")
    type_line(page, "exit 3")
    page.wait_for_function(f"() => {STATE} === 'exited'", timeout=WAIT_MS)
    status_text = page.locator("[data-shell-status]").inner_text()

    # The session is in the audit log: on the audit page and in the API.
    page.keyboard.press("Escape")
    page.goto(f"{live_stack.url}/t/{access.tenant.slug}/audit/")
    audit_row = page.locator("#audit tr[data-action='exec.shell']").first.inner_text()
    api_audit = page.request.get(
        f"{live_stack.url}/api/v1/tenants/{access.tenant.slug}/audit/?action=exec.shell"
    ).json()

    # A viewer: the Shell button's dialog shows the refusal; the socket itself says 4403.
    viewer = member_of(access.tenant, TenantRole.VIEWER)
    viewer_page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    log_in(viewer_page, live_stack.url, viewer)
    open_shell(viewer_page, live_stack.url, access, instance)
    refusal = viewer_page.locator("[data-shell-status]").inner_text()
    socket_url = live_stack.url.replace("http", "ws") + f"/ws/t/{access.tenant.slug}/instances/{instance.pk}/exec/"
    raw = viewer_page.evaluate(RAW_SOCKET, socket_url)
    screenshot(viewer_page, "exec-shell-viewer")
    viewer_page.context.close()

    # One-shot over REST with an API token.
    _, key = api_token_create(user=access.actor, name="exec", tenant=access.tenant)
    code, result = rest_exec(
        live_stack.url, access.tenant.slug, instance, key, {"command": ["sh", "-c", "echo out; echo err >&2; exit 5"]}
    )

    assert hostname and hostname != "$HOSTNAME"
    assert before != after and int(after[1]) == terminal_cols < int(before[1])
    assert interrupt_s < 30  # Ctrl-C ended `sleep 100`
    assert "exited with code 3" in status_text
    assert str(instance.pk) in audit_row and access.actor.username in audit_row
    assert [e["target"] for e in api_audit["results"]] == [str(instance.pk)]
    assert "needs the developer role" in refusal and "your role is viewer" in refusal
    assert raw["code"] == 4403 and "developer role" in raw["messages"][0]["message"]
    assert (code, result) == (200, {"output": "out\nerr\n", "exit_code": 5, "timed_out": False, "truncated": False})
    assert AuditEntry.objects.filter(action=AuditAction.EXEC_RUN, target=str(instance.pk)).count() == 1
    assert Instance.objects.get(pk=instance.pk).status in ("running", "healthy")
