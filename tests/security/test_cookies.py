"""The cookie boundary between the portal and tenants' published apps, driven as a tenant would
drive it: the live portal (daphne), a real HyperVM whose app QEMU publishes on 127.0.0.1 at a port
of the platform's range (as every tenant app is published), and Debian's chromium (Playwright) as
the browser of a member who visits that app.

Cookies are scoped by host, not by port: when the portal and the tenants' apps share a host name,
the member's browser sends the portal's session and CSRF cookies to every tenant app, and a tenant
app's page sets cookies the portal reads. The tenant's app is a busybox httpd whose CGI scripts
answer with the Cookie header they got (``/cgi-bin/echo``) and set the cookie named in the query
string (``/cgi-bin/plant?name=value``), host-only and for the portal's host as Domain.

- A tenant's app never receives the portal's session or CSRF cookie of a logged-in member.
- Session fixation: a session cookie set by a tenant app's page does not log the browser in.
- CSRF token choice: a CSRF cookie planted by a tenant app's page does not make a POST pass.
- The portal refuses to start when its public host is (or resolves to) the apps' publish address.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from portal.models import App
from tenants.choices import TenantRole
from tests.support.live_stack import ROOT, free_port, stack_env
from vmworker.cli import credentials_from_authfile
from vmworker.driver.spec import PortForward
from vmworker.runtime import HostPortBusy, HyperVMRuntime, InstanceSpec, RuntimeSettings

pytestmark = [pytest.mark.vm, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-tests-1"  # tests.tenants.factories.UserFactory's
PLANTED_CSRF_SECRET = "t" * 32  # a CSRF secret of the tenant's choosing (Django's cookie format)
APP_PUBLISH_IP = settings.APP_PUBLISH_HOST_IP  # where host workers publish apps (127.0.0.1)
APP_UP_TIMEOUT_S = 120
START_REFUSAL_TIMEOUT_S = 60

ECHO_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo ""
echo "cookie-received:[$HTTP_COOKIE]"
"""
# The tenant chooses name and value; a page of 127.0.0.1 may set a cookie host-only or try a
# Domain (a browser takes a Domain only if it is the page's own host).
PLANT_CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo "Set-Cookie: $QUERY_STRING; Path=/"
echo "Set-Cookie: $QUERY_STRING; Path=/; Domain=$PORTAL_HOST"
echo ""
echo "planted"
"""
APP_COMMAND = (
    "/bin/busybox mkdir -p /tmp/w/cgi-bin"
    ' && echo "$ECHO_CGI" > /tmp/w/cgi-bin/echo && echo "$PLANT_CGI" > /tmp/w/cgi-bin/plant'
    " && /bin/busybox chmod 755 /tmp/w/cgi-bin/echo /tmp/w/cgi-bin/plant"
    " && exec /bin/httpd -f -p 8080 -h /tmp/w"
)


def portal_host(live_stack) -> str:
    return urlsplit(live_stack.url).hostname


@pytest.fixture(scope="module")
def tenant_app(live_stack, test_images, registry_authfile):
    """One tenant app for the module: a real HyperVM serving the CGI scripts, published by QEMU on
    127.0.0.1 at a free port of the platform's range. Yields its URL."""
    state_dir = Path(tempfile.mkdtemp(prefix="hypervm-cookies-", dir="/var/tmp"))
    state_dir.chmod(0o755)
    runtime = HyperVMRuntime(RuntimeSettings(state_dir=state_dir, boot_timeout_s=APP_UP_TIMEOUT_S))
    image = test_images["httpd"]
    low, high = settings.HOST_PORT_RANGE
    try:
        for port in random.sample(range(low, high + 1), 20):  # other sessions' apps hold some
            spec = InstanceSpec(
                image=image.reference,
                credentials=credentials_from_authfile(registry_authfile, image.reference),
                tls_verify=False,
                memory_mib=128,
                shell_command=APP_COMMAND,
                env={"ECHO_CGI": ECHO_CGI, "PLANT_CGI": PLANT_CGI, "PORTAL_HOST": portal_host(live_stack)},
                ports=(PortForward(APP_PUBLISH_IP, port, 8080),),
            )
            try:
                runtime.boot(spec)
                break
            except HostPortBusy:
                runtime.remove(spec.instance_id)
        else:
            raise AssertionError("no free port in the platform's range")
        url = f"http://{APP_PUBLISH_IP}:{port}"
        deadline = time.monotonic() + APP_UP_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url + "/cgi-bin/echo", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, runtime.console_tail(spec.instance_id)
                time.sleep(0.5)
        yield url
    finally:
        for status in runtime.list_instances():
            runtime.remove(status.instance_id)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def developer(tenant, member_of):
    return member_of(tenant, TenantRole.DEVELOPER)


def log_in(page, live_stack, user) -> dict[str, str]:
    """Logs ``user`` in through the portal's login form; returns the portal's cookies the browser holds."""
    page.goto(live_stack.url + "/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    return {cookie["name"]: cookie["value"] for cookie in page.context.cookies(live_stack.url)}


def received_cookies(page, tenant_app: str) -> str:
    """What the tenant's app got in the Cookie header when the browser visited it."""
    page.goto(tenant_app + "/cgi-bin/echo")
    text = page.inner_text("body")
    assert text.startswith("cookie-received:["), text
    return text.strip().removeprefix("cookie-received:[").removesuffix("]")


def test_a_tenant_app_visited_by_a_logged_in_member_gets_none_of_the_portals_cookies(
    live_stack, tenant, developer, tenant_app, page
):
    portal_cookies = log_in(page, live_stack, developer)
    assert {"sessionid", "csrftoken"} <= set(portal_cookies), portal_cookies  # the member is logged in

    received = received_cookies(page, tenant_app)

    leaked = [name for name, value in portal_cookies.items() if name in received or value in received]
    assert leaked == [], f"the tenant's app received the portal's cookies {leaked}: {received!r}"


def session_key_of(user) -> str:
    """A session of the portal the tenant holds: the tenant logs in as itself."""
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_a_session_cookie_set_by_a_tenant_app_page_does_not_log_the_browser_in(
    live_stack, tenant, member_of, other_tenant, tenant_app, page
):
    attacker = member_of(other_tenant, TenantRole.OWNER)
    page.goto(f"{tenant_app}/cgi-bin/plant?sessionid={session_key_of(attacker)}")

    page.goto(live_stack.url + "/")

    assert "/login/" in page.url, f"the portal took the tenant's session: {page.url}"
    assert attacker.username not in page.content()


FETCH_POST_JS = """async ({url, token, body}) => {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin", body,
    headers: {"Content-Type": "application/json", "X-CSRFToken": token},
  });
  return {status: response.status, text: (await response.text()).slice(0, 300)};
}"""


def test_a_csrf_cookie_planted_by_a_tenant_app_page_does_not_make_a_post_pass(
    live_stack, tenant, developer, tenant_app, page
):
    """The tenant plants a CSRF secret of its choosing; a POST from the portal's own page (the
    portal's Origin, the member's session) that carries that secret is refused. Before the fix it
    was accepted (201): the planted cookie replaced the portal's and the secret matched."""
    log_in(page, live_stack, developer)
    page.goto(f"{tenant_app}/cgi-bin/plant?csrftoken={PLANTED_CSRF_SECRET}")
    page.goto(live_stack.url + "/")
    body = json.dumps(
        {
            "id": "/chosen-token",
            "cmd": "sleep 1",
            "cpus": 0.1,
            "mem": 64,
            "instances": 0,
            "container": {"type": "DOCKER", "docker": {"image": "demo/hello:latest"}},
        }
    )

    answer = page.evaluate(FETCH_POST_JS, {"url": "/v2/apps", "token": PLANTED_CSRF_SECRET, "body": body})

    assert answer["status"] == 403 and "CSRF" in answer["text"], answer
    assert not App.objects.filter(marathon_id="/chosen-token").exists()


def start_refusal_env(public_url: str) -> dict[str, str]:
    return stack_env(f"refusal-{uuid.uuid4().hex[:8]}") | {"PORTAL_PUBLIC_URL": public_url}


def manage_check(public_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=start_refusal_env(public_url),
        capture_output=True,
        text=True,
        timeout=START_REFUSAL_TIMEOUT_S,
    )


def serves_until_exit(process: subprocess.Popen, url: str) -> bool:
    """True as soon as the web server answers ``url``; False when it exited first."""
    deadline = time.monotonic() + START_REFUSAL_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except OSError:
            time.sleep(0.2)
    return process.poll() is None


@pytest.mark.parametrize("public_url", [f"http://{APP_PUBLISH_IP}:8000", "http://localhost:8000"])
def test_the_portal_refuses_to_start_on_the_apps_publish_address(public_url, tmp_path):
    refused = manage_check(public_url)
    assert refused.returncode != 0 and "portal.E001" in refused.stderr, (refused.returncode, refused.stderr)
    assert APP_PUBLISH_IP in refused.stderr and "publish" in refused.stderr

    # daphne, as the run command and the test stack start the web server, refuses too.
    port = free_port()
    with (tmp_path / "web.log").open("w+") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            cwd=ROOT,
            env=start_refusal_env(public_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            served = serves_until_exit(web, f"http://127.0.0.1:{port}/login/")
        finally:
            if web.poll() is None:
                web.kill()
                web.wait(timeout=10)
        log.seek(0)
        output = log.read()
    assert not served and web.returncode != 0 and "portal.E001" in output, (served, web.returncode, output[-2000:])

    accepted = manage_check("http://127.0.0.2:8000")  # the default: a host of its own
    assert accepted.returncode == 0, accepted.stderr
