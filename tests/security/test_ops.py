"""The run command as a new user runs it: `./scripts/run` itself, on free ports, with its own
state dir, database, Celery queue and compute-host name, checked from outside as a visitor and
as another local user would see it: production error pages, static files, a working login
over plain http, private files, a Redis that wants its password, the demo app booting as a VM,
no secret on any process's command line (QEMU's included), and Ctrl-C leaving no process
behind."""

import base64
import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.support.live_stack import PORTAL_HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 420  # a fresh database is migrated and the demo images are built and pushed
STOP_TIMEOUT_S = 60
APP_RUNNING_TIMEOUT_S = 180  # pull, unpack, boot under TCG on a loaded machine
APP_GONE_TIMEOUT_S = 60
# The run's own Redis database on the project's instance (tests default to 1, bench to 2).
RUN_REDIS_DB = 8
DB_PASSWORD_FILE = Path(os.environ.get("PORTAL_DB_PASSWORD_FILE", "/etc/hypervm/db-password"))

pytestmark = [pytest.mark.slow]


def _process_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, session id, start time) of a process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), fields[19]


def _descendants(root_pid: int) -> dict[int, str]:
    """Every live process under root_pid: pid -> start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _process_stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found, todo = {}, [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child in started and child not in found:
                found[child] = started[child]
                todo.append(child)
    return found


class CommandLineRecorder:
    """Samples the command line of every process of the run (its descendants and its session)
    until stopped: short-lived ones (psql, htpasswd) are caught while they run."""

    def __init__(self, root_pid: int, *, marker: str):
        self.root_pid = root_pid
        self.marker = marker.encode()  # libvirtd starts QEMU: it is ours if its argv names this
        self.command_lines: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        while not self._stop.is_set():
            ours = set(_descendants(self.root_pid))
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                stat = _process_stat(int(entry.name))
                try:
                    raw = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if stat is None or (
                    int(entry.name) not in ours and stat[1] != self.root_pid and self.marker not in raw
                ):
                    continue
                self.command_lines.add(raw.replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.02)  # psql and htpasswd live for longer than this


def _run_env(state_dir: Path, host_state_dir: Path) -> dict[str, str]:
    unique = uuid.uuid4().hex[:8]
    # Not the test session's own settings: the run command chooses them, as for a new user.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name != "DJANGO_SETTINGS_MODULE" and not name.startswith(("PORTAL_", "HYPERVM_", "PYTEST_"))
    }
    return inherited | {
        # The portal's own host, as by default (apps are published on 127.0.0.1).
        "PORTAL_PUBLIC_URL": f"http://{PORTAL_HOST}:{free_port(PORTAL_HOST)}",
        "PORTAL_REGISTRY_PORT": str(free_port()),
        "PORTAL_STATE_DIR": str(state_dir),
        "PORTAL_DB_NAME": f"hypervm_run_{unique}",
        "PORTAL_CELERY_QUEUE": f"run-{unique}",
        "PORTAL_REDIS_DB": str(RUN_REDIS_DB),
        "HYPERVM_HOST_NAME": f"run-{unique}",
        "HYPERVM_STATE_DIR": str(host_state_dir),
        "HYPERVM_VIRT_TYPE": "qemu",  # TCG, as the boot probe finds on dev/CI machines, without its boot
    }


def _drop_database(name: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "dropdb", "--if-exists", "--force", name], check=False)


def _http(opener, url: str, data: dict | None = None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status, response.geturl(), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, url, error.read().decode(errors="replace")


def _wait_until_ready(process: subprocess.Popen, output: Path, url: str) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if match := re.search(r"login: (\S+) / (\S+)", output.read_text(errors="replace")):
            try:
                urllib.request.urlopen(url + "/login/", timeout=2).read()
                return f"{match.group(1)} {match.group(2)}"
            except OSError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"./scripts/run did not come up (exit {process.poll()}): {output.read_text()[-3000:]}")


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def _file_mode_problems(state_dir: Path) -> list[str]:
    """The state dir and its secret-holding folders are 0700 and every file in them that holds
    or reveals a secret (passwords, keys, logs, the beat schedule) is 0600. (Registry blobs are
    demo images, private by their 0700 parents.)"""
    private_dirs = [state_dir, state_dir / "log", state_dir / "secrets", state_dir / "registry"]
    problems = [f"{path.name}/ is missing" for path in private_dirs if not path.is_dir()]
    problems += [f"{path.name}/ is {_mode(path)}" for path in private_dirs if path.is_dir() and _mode(path) != "0o700"]
    must_exist = ["log/bootstrap.txt", "secrets/django-secret-key", "secrets/demo-admin-password"]
    must_exist += ["secrets/metrics-scrape-token"]
    must_exist += ["registry/password", "registry/auth.json", "registry/htpasswd"]
    problems += [f"{name} is missing" for name in must_exist if not (state_dir / name).exists()]
    files = [*state_dir.glob("log/*"), *state_dir.glob("secrets/*"), *state_dir.glob("registry/*")]
    files += list(state_dir.glob("celerybeat-schedule*"))
    for path in files:
        if path.is_file() and path.stat().st_mode & 0o077:
            problems.append(f"{path.relative_to(state_dir)} is {_mode(path)}")
    return problems


def _redis_problems() -> list[str]:
    """The project's Redis (the one the run's settings name) refuses a client without the
    password and answers one with it."""
    problems = []
    url = urllib.parse.urlsplit(settings.REDIS_URL)
    anonymous = redis.Redis(host=url.hostname, port=url.port, socket_timeout=5)
    try:
        anonymous.ping()
        problems.append(f"Redis {url.hostname}:{url.port} answered PING without a password")
    except redis.AuthenticationError:
        pass  # NOAUTH
    except redis.ResponseError as error:
        if "NOAUTH" not in str(error):
            raise
    finally:
        anonymous.close()
    if not url.password:
        problems.append("the portal's Redis URL has no password")
    else:
        with redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5) as client:
            if client.ping() is not True:
                problems.append("Redis did not answer PING with the password")
    return problems


def _worker_problems(worker_log: Path) -> list[str]:
    """The run's Celery worker got through to the broker with the password."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if " ready." in worker_log.read_text(errors="replace"):
            return []
        time.sleep(0.5)
    return [f"the Celery worker never got ready: {worker_log.read_text(errors='replace')[-1500:]}"]


def _known_secrets(state_dir: Path) -> dict[str, str]:
    files = {
        "database password": DB_PASSWORD_FILE,
        "Redis password": Path(os.environ.get("PORTAL_REDIS_PASSWORD_FILE", "/etc/hypervm/redis-password")),
        "registry password": state_dir / "registry" / "password",
        "admin password": state_dir / "secrets" / "demo-admin-password",
        "Django secret key": state_dir / "secrets" / "django-secret-key",
        "metrics scrape token": state_dir / "secrets" / "metrics-scrape-token",
    }
    return {name: path.read_text().strip() for name, path in files.items() if path.exists()}


@pytest.mark.vm
def test_scripts_run_serves_production_settings_with_private_secrets_and_stops_cleanly(tmp_path):
    state_dir = tmp_path / "var"
    # Like the live stack's host workers: outside /tmp's private tree, QEMU must traverse it.
    host_state_dir = Path(tempfile.mkdtemp(prefix="hypervm-run-", dir="/var/tmp"))
    host_state_dir.chmod(0o755)
    env = _run_env(state_dir, host_state_dir)
    url = env["PORTAL_PUBLIC_URL"]
    output = tmp_path / "run.out"
    problems: list[str] = []
    stack: dict[int, str] = {}
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["./scripts/run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with CommandLineRecorder(process.pid, marker=str(host_state_dir)) as recorder:
            username, password = _wait_until_ready(process, output, url).split(" ", 1)
            stack.update(_descendants(process.pid))
            if f"HyperVM portal: {url}/" not in output.read_text(errors="replace"):
                problems.append(f"the printed URL is not {url}/: {output.read_text(errors='replace')[-500:]}")

            # DEBUG off: a 404 is the plain page, not the URLconf listing.
            status, _, body = _http(urllib.request.build_opener(), f"{url}/no-such-page-{uuid.uuid4().hex}/")
            if status != 404 or "URLconf" in body or "DEBUG = True" in body:
                problems.append(f"a missing page answered {status} with the debug page")
            status, _, body = _http(urllib.request.build_opener(), url + "/static/css/portal.css")
            if status != 200 or "{" not in body:
                problems.append(f"static CSS answered {status}")

            # The printed login works over plain http, as a browser does it (a Secure cookie
            # would never be sent back here, and the login would fail on CSRF).
            cookies = http.cookiejar.CookieJar()
            browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
            _, _, form = _http(browser, url + "/login/")
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
            status, landed, page = _http(
                browser,
                url + "/login/",
                {"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1) if csrf else ""},
            )
            if status != 200 or landed.endswith("/login/") or username not in page:
                problems.append(f"the printed login did not log in over http (answered {status} at {landed})")

            problems += _registry_catalog_problems(env["PORTAL_REGISTRY_PORT"], state_dir)
            problems += _file_mode_problems(state_dir)
            problems += _redis_problems()
            problems += _worker_problems(state_dir / "log" / "worker.log")
            # The demo app boots as a VM (its QEMU's command line is sampled too) and goes.
            problems += _demo_app_problems(browser, cookies, url, env["PORTAL_REGISTRY_PORT"], state_dir)
            problems += _metrics_problems(browser, url, state_dir)  # the host has registered by now
            problems += _wait_for_no_vm_resources(host_state_dir, pooled=False, after="the deleted app")
        secrets_by_name = _known_secrets(state_dir)
        for log in sorted((state_dir / "log").glob("*")):
            for name, secret in secrets_by_name.items():
                # bootstrap.txt is where the run command keeps the admin login it prints.
                if secret in log.read_text(errors="replace") and (log.name, name) != (
                    "bootstrap.txt",
                    "admin password",
                ):
                    problems.append(f"the {name} is in log/{log.name}")
        if not any("qemu-system" in command_line for command_line in recorder.command_lines):
            problems.append("no QEMU command line was seen: the VM's was not checked")
        for command_line in recorder.command_lines:
            for name, secret in secrets_by_name.items():
                if secret in command_line:
                    problems.append(f"the {name} is on a command line: {command_line.replace(secret, '***')[:200]}")

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        process.wait(timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _still_running(stack):
            time.sleep(0.2)
        left = _still_running(stack)
        if left:
            problems.append(f"processes left after Ctrl-C: {[(pid, _cmdline(pid)) for pid in left]}")
        # The warm pool's paused blank VMs go with the host worker.
        problems += _wait_for_no_vm_resources(host_state_dir, pooled=True, after="Ctrl-C")
        assert problems == [], "\n".join(problems)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in _still_running(stack):
            os.kill(pid, signal.SIGKILL)
        _remove_vm_resources(host_state_dir)
        _drop_database(env["PORTAL_DB_NAME"])
        shutil.rmtree(host_state_dir, ignore_errors=True)


def _api(browser, cookies, url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """The browser session's API call (DRF wants the CSRF token of a session in a header)."""
    csrf = next((cookie.value for cookie in cookies if cookie.name == "csrftoken"), "")
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
    )
    try:
        with browser.open(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _metrics_problems(admin_browser, url: str, state_dir: Path) -> list[str]:
    """/metrics answers the token in the run's 0600 file and the admin's session, nobody else."""
    token = (state_dir / "secrets" / "metrics-scrape-token").read_text().strip()
    scraper = urllib.request.build_opener()
    scraper.addheaders = [("Authorization", f"Bearer {token}")]
    problems = []
    for who, opener, expected in (
        ("anonymous", urllib.request.build_opener(), 401),
        ("the scrape token", scraper, 200),
        ("the admin's session", admin_browser, 200),
    ):
        status, _, body = _http(opener, url + "/metrics")
        if status != expected or (expected == 200 and "hypervm_host_up{" not in body):
            problems.append(f"/metrics answered {who} with {status}: {body[:200]}")
    return problems


def _registry_catalog_problems(registry_port: str, state_dir: Path) -> list[str]:
    """The run command pushes the demo image and nothing else (no test images)."""
    password = (state_dir / "registry" / "password").read_text().strip()
    token = base64.b64encode(f"demo:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{registry_port}/v2/_catalog", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        repositories = json.loads(response.read())["repositories"]
    return [] if repositories == ["demo/hello"] else [f"the run command's registry holds {repositories}"]


def _demo_app_problems(browser, cookies, url: str, registry_port: str, state_dir: Path) -> list[str]:
    definition = {
        "id": "/ops-hello",
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "container": {
            "docker": {"image": f"127.0.0.1:{registry_port}/demo/hello:latest"},
            "portMappings": [{"containerPort": 8080, "hostPort": 0}],
        },
        "networks": [{"mode": "container/bridge"}],
    }
    status, answer = _api(browser, cookies, url, "POST", "/v2/apps", definition)
    if status != 201:
        return [f"deploying the demo app answered {status}: {answer}"]
    problems, tasks = [], []
    deadline = time.monotonic() + APP_RUNNING_TIMEOUT_S
    while time.monotonic() < deadline:
        _, answer = _api(browser, cookies, url, "GET", "/v2/apps/ops-hello/tasks")
        tasks = answer.get("tasks", [])
        if any(task["state"] == "TASK_RUNNING" for task in tasks):
            break
        time.sleep(1)
    else:
        worker_log = (state_dir / "log" / "worker.log").read_text(errors="replace")[-1500:]
        problems.append(f"the demo app never ran: {tasks}; worker log: {worker_log}")
    deadline = time.monotonic() + APP_GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        status, answer = _api(browser, cookies, url, "DELETE", "/v2/apps/ops-hello")
        if status in (200, 404):
            return problems
        time.sleep(1)  # 409 while its deployment is still going
    return [*problems, f"the demo app could not be deleted: {status} {answer}"]


def _vm_resources(host_state_dir: Path, *, pooled: bool = True) -> tuple[list, list]:
    """The libvirt domains and tenant networks of the run's host state dir; ``pooled=False``
    leaves out the warm pool's blank VMs (the run command keeps one: they belong to no app)."""
    import libvirt

    pool_folder = f"{host_state_dir}/pool/"
    connection = libvirt.open("qemu:///system")
    try:
        domains = [
            domain.name()
            for domain in connection.listAllDomains()
            if str(host_state_dir) in (xml := _xml(domain)) and (pooled or pool_folder not in xml)
        ]
        markers = {marker.name for marker in (host_state_dir / "networks").glob("*")}
        networks = [name for name in connection.listNetworks() if any(marker in name for marker in markers)]
        return domains, networks
    finally:
        connection.close()


def _xml(domain) -> str:
    import libvirt

    try:
        return domain.XMLDesc()
    except libvirt.libvirtError:
        return ""  # another session's VM, gone since the listing


def _wait_for_no_vm_resources(host_state_dir: Path, *, pooled: bool, after: str) -> list[str]:
    deadline = time.monotonic() + APP_GONE_TIMEOUT_S
    while time.monotonic() < deadline and any(_vm_resources(host_state_dir, pooled=pooled)):
        time.sleep(1)
    domains, networks = _vm_resources(host_state_dir, pooled=pooled)
    return [f"{after} left domains {domains} and networks {networks}"] if domains or networks else []


def _remove_vm_resources(host_state_dir: Path) -> None:
    """Whatever a failed run left on the shared libvirtd (only the run's own)."""
    import libvirt

    domains, networks = _vm_resources(host_state_dir)
    connection = libvirt.open("qemu:///system")
    try:
        # Domains and networks answer the same four calls.
        found = []
        for lookup, names in ((connection.lookupByName, domains), (connection.networkLookupByName, networks)):
            for name in names:
                try:
                    found.append(lookup(name))
                except libvirt.libvirtError:
                    pass  # gone since the listing
        for resource in found:
            try:
                if resource.isActive():
                    resource.destroy()
                if resource.isPersistent():
                    resource.undefine()
            except libvirt.libvirtError:
                pass  # gone since the listing (a stopping worker's own clean-up)
    finally:
        connection.close()


def _still_running(processes: dict[int, str]) -> list[int]:
    return [pid for pid, started in processes.items() if (_process_stat(pid) or (0, 0, ""))[2] == started]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def test_setup_starts_a_private_redis_where_none_runs(tmp_path):
    """scripts/setup on a machine without the project's Redis (here: on a free port, with its
    own password file): it starts one that wants the password, on loopback only, whose
    password is in no process's command line and in no file another user can read."""
    port = free_port()
    password_file = tmp_path / "etc" / "redis-password"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_REDIS")} | {
        "PORTAL_REDIS_PORT": str(port),
        "PORTAL_REDIS_PASSWORD_FILE": str(password_file),
        "PORTAL_STATE_DIR": str(tmp_path / "var"),
    }
    redis_dir = Path(f"/var/lib/hypervm-redis/{port}")
    try:
        setup = subprocess.run(
            ["bash", "-c", "source scripts/setup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert setup.returncode == 0, setup.stderr[-2000:]
        password = password_file.read_text().strip()
        server_pid = int((redis_dir / "redis.pid").read_text())

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
        with redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5) as client:
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
            assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert password not in _cmdline(server_pid)
        assert {path.name: _mode(path) for path in [password_file, *password_file.parent.iterdir(), redis_dir]} == {
            "redis-password": "0o600",
            f"redis-{port}.conf": "0o600",
            str(port): "0o700",
        }
    finally:
        if (redis_dir / "redis.pid").exists():
            os.kill(int((redis_dir / "redis.pid").read_text()), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (redis_dir / "redis.pid").exists():
                time.sleep(0.1)
        shutil.rmtree(redis_dir, ignore_errors=True)
