"""Issue 9, auth: tokens never exceed the token that made them; login and API are throttled;
tenant registries cannot point the platform at its own loopback/private services, and a stored
registry password only ever goes to the URL it was entered for.

Everything runs against a real daphne + Celery worker started for this module (``auth_stack``)
with a low API rate, a low login-failure limit and this module's fake registries on the
platform's registry allowlist (set in the stack's environment before it starts)."""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tenants import services as tenant_services
from tenants.choices import TenantRole
from tenants.models import ApiToken, ImageRegistry
from tests.support.live_stack import embedded_registry_env, running_stack, stack_env
from tests.tenants.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

USER_RATE_PER_MIN = 10
LOGIN_FAILURE_LIMIT = 3
PASSWORD = "pw-for-tests-1"  # tests.tenants.factories.UserFactory
CHECK_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 10


# ---- fake registries and a recording listener (this test's own servers on 127.0.0.1) ----------


@dataclass
class FakeRegistry:
    """Answers ``GET /v2/`` like a registry: Basic auth against ``password``, or a Bearer
    challenge naming ``realm``. Records the Authorization header of every request."""

    server: ThreadingHTTPServer
    password: str = ""
    realm: str = ""
    authorizations: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def passwords_received(self) -> list[str]:
        basics = [a[6:] for a in self.authorizations if a.startswith("Basic ")]
        return [base64.b64decode(b).decode().split(":", 1)[1] for b in basics]


def start_fake_registry() -> FakeRegistry:
    fake: FakeRegistry

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            authorization = self.headers.get("Authorization", "")
            fake.authorizations.append(authorization)
            if fake.realm:
                challenge = f'Bearer realm="{fake.realm}",service="fake"'
            else:
                challenge = 'Basic realm="fake"'
            ok = (
                not fake.realm
                and authorization == "Basic " + base64.b64encode(f"robot:{fake.password}".encode()).decode()
            )
            self.send_response(200 if ok else 401)
            if not ok:
                self.send_header("WWW-Authenticate", challenge)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    fake = FakeRegistry(server=ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return fake


class ConnectionRecorder:
    """A TCP listener standing in for a loopback service (Redis, a metadata endpoint): it
    counts the connections it accepts, which must stay zero."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.stopped.set()
        self.sock.close()


@dataclass
class AuthStack:
    url: str
    original: FakeRegistry  # where the registry password was entered
    moved: FakeRegistry  # the URL a tenant admin changes the registry to
    bearer: FakeRegistry  # answers with a Bearer realm on loopback
    recorder: ConnectionRecorder


@pytest.fixture(scope="module")
def auth_stack(django_db_setup, django_db_blocker, registry, tmp_path_factory) -> Iterator[AuthStack]:
    recorder = ConnectionRecorder()
    original, moved, bearer = start_fake_registry(), start_fake_registry(), start_fake_registry()
    bearer.realm = f"http://127.0.0.1:{recorder.port}/token"
    queue = f"test-auth-{uuid.uuid4().hex[:8]}"
    base_env = stack_env(queue)
    allowlist = [e for e in base_env.get("PORTAL_REGISTRY_HOST_ALLOWLIST", "").split(",") if e]
    env = (
        base_env
        | embedded_registry_env(registry, tmp_path_factory.mktemp("auth-secrets"))
        | {
            "PORTAL_API_THROTTLE_USER_RATE": f"{USER_RATE_PER_MIN}/minute",
            "PORTAL_API_THROTTLE_ANON_RATE": f"{USER_RATE_PER_MIN}/minute",
            "PORTAL_LOGIN_FAILURE_LIMIT": str(LOGIN_FAILURE_LIMIT),
            # Counters of its own: user ids repeat in the next session's fresh test database.
            "PORTAL_CACHE_KEY_PREFIX": queue,
            "PORTAL_REGISTRY_HOST_ALLOWLIST": ",".join(
                [*allowlist, original.host_port, moved.host_port, bearer.host_port]
            ),
        }
    )
    try:
        with running_stack(env=env, queue=queue, log_dir=tmp_path_factory.mktemp("auth-stack")) as stack:
            yield AuthStack(url=stack.url, original=original, moved=moved, bearer=bearer, recorder=recorder)
    finally:
        for fake in (original, moved, bearer):
            fake.server.shutdown()
            fake.server.server_close()
        recorder.close()


def token_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


def member(tenant, role):
    return MembershipFactory(tenant=tenant, role=role, user=UserFactory()).user


def wait_for_check(registry_id: int) -> ImageRegistry:
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while time.monotonic() < deadline:
        registry = ImageRegistry.objects.get(pk=registry_id)
        if registry.last_checked_at is not None:
            return registry
        time.sleep(0.2)
    raise AssertionError("the worker did not record a check result in time")


# ---- tokens never exceed the token that made them --------------------------------------------


def test_a_pinned_token_mints_only_tokens_pinned_to_its_own_tenant(auth_stack):
    home, elsewhere = TenantFactory(), TenantFactory()
    user = member(home, TenantRole.DEVELOPER)
    MembershipFactory(tenant=elsewhere, user=user, role=TenantRole.OWNER)
    _, pinned = tenant_services.api_token_create(user=user, name="ci", tenant=home)
    url = f"{auth_stack.url}/api/v1/tokens/"

    unpinned = requests.post(url, json={"name": "wide"}, headers=token_headers(pinned), timeout=HTTP_TIMEOUT_S)
    assert unpinned.status_code in (400, 403), unpinned.text
    other = requests.post(
        url, json={"name": "other", "tenant": elsewhere.slug}, headers=token_headers(pinned), timeout=HTTP_TIMEOUT_S
    )
    assert other.status_code in (403, 404), other.text
    same = requests.post(
        url, json={"name": "same", "tenant": home.slug}, headers=token_headers(pinned), timeout=HTTP_TIMEOUT_S
    )
    assert same.status_code == 201, same.text
    assert same.json()["tenant"] == home.slug
    assert sorted(ApiToken.objects.filter(user=user).values_list("name", "tenant__slug")) == [
        ("ci", home.slug),
        ("same", home.slug),
    ]


def test_a_pinned_token_neither_sees_nor_revokes_the_users_other_tokens(auth_stack):
    home, elsewhere = TenantFactory(), TenantFactory()
    user = member(home, TenantRole.DEVELOPER)
    MembershipFactory(tenant=elsewhere, user=user, role=TenantRole.DEVELOPER)
    _, pinned = tenant_services.api_token_create(user=user, name="ci", tenant=home)
    wide, _ = tenant_services.api_token_create(user=user, name="laptop")
    foreign, _ = tenant_services.api_token_create(user=user, name="theirs", tenant=elsewhere)
    url = f"{auth_stack.url}/api/v1/tokens/"

    listing = requests.get(url, headers=token_headers(pinned), timeout=HTTP_TIMEOUT_S)
    assert listing.status_code == 200 and [t["name"] for t in listing.json()["results"]] == ["ci"], listing.text
    for token in (wide, foreign):
        revoke = requests.delete(f"{url}{token.pk}/", headers=token_headers(pinned), timeout=HTTP_TIMEOUT_S)
        assert revoke.status_code == 404, revoke.text
    assert ApiToken.objects.filter(revoked_at__isnull=False).count() == 0


# ---- login and API throttled ----------------------------------------------------------------


def login_attempt(session: requests.Session, url: str, username: str, password: str) -> requests.Response:
    session.get(url, timeout=HTTP_TIMEOUT_S)
    return session.post(
        url,
        data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_repeated_failed_logins_lock_the_account_out_even_for_the_right_password(auth_stack, path):
    user = UserFactory(is_staff=True)
    session = requests.Session()
    url = auth_stack.url + path
    statuses = [
        login_attempt(session, url, user.username, "wrong-password").status_code for _ in range(LOGIN_FAILURE_LIMIT)
    ]
    assert statuses == [200] * (LOGIN_FAILURE_LIMIT - 1) + [429], statuses

    locked = login_attempt(session, url, user.username, PASSWORD)
    assert locked.status_code == 429, (locked.status_code, locked.headers.get("Location"))
    assert "locked" in locked.text.lower() and "sessionid" not in session.cookies
    fresh = login_attempt(requests.Session(), url, UserFactory(is_staff=True).username, PASSWORD)
    assert fresh.status_code == 302  # another account from the same address still logs in


def test_an_api_burst_is_answered_429_with_retry_after(auth_stack):
    tenant = TenantFactory()
    _, key = tenant_services.api_token_create(user=member(tenant, TenantRole.VIEWER), name="burst", tenant=tenant)
    statuses = []
    for _ in range(USER_RATE_PER_MIN + 3):
        response = requests.get(f"{auth_stack.url}/api/v1/tenants/", headers=token_headers(key), timeout=HTTP_TIMEOUT_S)
        statuses.append(response.status_code)
    assert statuses[:USER_RATE_PER_MIN] == [200] * USER_RATE_PER_MIN and statuses[-1] == 429, statuses
    assert int(response.headers["Retry-After"]) > 0


def test_a_marathon_burst_is_answered_429_with_retry_after_and_so_is_the_event_stream(auth_stack):
    tenant = TenantFactory()
    _, key = tenant_services.api_token_create(user=member(tenant, TenantRole.VIEWER), name="burst", tenant=tenant)
    statuses = []
    for _ in range(USER_RATE_PER_MIN + 3):
        response = requests.get(f"{auth_stack.url}/v2/apps", headers=token_headers(key), timeout=HTTP_TIMEOUT_S)
        statuses.append(response.status_code)
    assert statuses[:USER_RATE_PER_MIN] == [200] * USER_RATE_PER_MIN and statuses[-1] == 429, statuses
    assert int(response.headers["Retry-After"]) > 0
    headers = token_headers(key) | {"Accept": "text/event-stream"}
    with requests.get(f"{auth_stack.url}/v2/events", headers=headers, stream=True, timeout=HTTP_TIMEOUT_S) as stream:
        assert stream.status_code == 429 and int(stream.headers["Retry-After"]) > 0


# ---- registries: no loopback/private targets, no password to a changed URL ------------------


@pytest.fixture
def registry_admin(auth_stack):
    tenant = TenantFactory()
    _, key = tenant_services.api_token_create(user=member(tenant, TenantRole.ADMIN), name="admin", tenant=tenant)
    return f"{auth_stack.url}/api/v1/tenants/{tenant.slug}/registries/", token_headers(key)


@pytest.mark.parametrize(
    "url,insecure",
    [
        ("http://127.0.0.1:6379", True),
        ("http://localhost:6379", True),
        ("https://[::1]:6379", False),
        ("https://10.0.0.1", False),
        ("https://169.254.169.254", False),
        ("https://0.0.0.0:5000", False),
        ("https://224.0.0.1", False),
    ],
)
def test_a_registry_on_a_platform_address_is_refused_422(registry_admin, url, insecure):
    path, headers = registry_admin
    response = requests.post(
        path, json={"name": "r", "url": url, "insecure": insecure}, headers=headers, timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 422 and "url" in response.json(), (response.status_code, response.text)
    assert not ImageRegistry.objects.exists()


def test_a_bearer_realm_on_loopback_is_not_followed(auth_stack, registry_admin):
    path, headers = registry_admin
    created = requests.post(
        path,
        json={"name": "r", "url": auth_stack.bearer.url, "insecure": True, "username": "robot", "password": "pw"},
        headers=headers,
        timeout=HTTP_TIMEOUT_S,
    )
    assert created.status_code == 201, created.text
    check = requests.post(f"{path}{created.json()['id']}/check/", headers=headers, timeout=HTTP_TIMEOUT_S)
    assert check.status_code == 202

    result = wait_for_check(created.json()["id"])
    assert auth_stack.bearer.authorizations, "the check reached the registry"
    assert auth_stack.recorder.connections == 0, "the check connected to the loopback realm"
    assert result.last_check_ok is False and "realm" in result.last_check_message, result.last_check_message


def test_a_changed_registry_url_never_gets_the_stored_password(auth_stack, registry_admin):
    path, headers = registry_admin
    original, moved = auth_stack.original, auth_stack.moved
    original.password, moved.password = "first-secret", "second-secret"
    body = {"name": "r", "url": original.url, "insecure": True, "username": "robot", "password": "first-secret"}
    created = requests.post(path, json=body, headers=headers, timeout=HTTP_TIMEOUT_S)
    assert created.status_code == 201, created.text
    detail = f"{path}{created.json()['id']}/"

    changed = requests.patch(detail, json={"url": moved.url}, headers=headers, timeout=HTTP_TIMEOUT_S)
    assert changed.status_code == 422 and "password" in changed.json(), (changed.status_code, changed.text)
    requests.post(detail + "check/", headers=headers, timeout=HTTP_TIMEOUT_S)
    assert wait_for_check(created.json()["id"]).last_check_ok is True
    assert "first-secret" not in moved.passwords_received()

    changed = requests.patch(
        detail, json={"url": moved.url, "password": "second-secret"}, headers=headers, timeout=HTTP_TIMEOUT_S
    )
    assert changed.status_code == 200, changed.text
    ImageRegistry.objects.filter(pk=created.json()["id"]).update(last_checked_at=None)
    requests.post(detail + "check/", headers=headers, timeout=HTTP_TIMEOUT_S)
    assert wait_for_check(created.json()["id"]).last_check_ok is True
    assert moved.passwords_received() == ["second-secret"]
    assert original.passwords_received() == ["first-secret"]
