"""The real processes, started for a test session: the ASGI web server (daphne) and a Celery
worker, both pointed at pytest-django's test database and the test Redis database. Each
session uses its own Celery queue so other sessions' workers never take its tasks."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from tests.support.storage_pools import remove_storage_pool

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30


# The portal's own host: tenants' apps are published on 127.0.0.1, and a browser shares cookies
# between every port of one host (portal.public_host).
PORTAL_HOST = "127.0.0.2"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stack_env(queue: str) -> dict[str, str]:
    return os.environ | {
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "PORTAL_DB_NAME": connection.settings_dict["NAME"],
        "PORTAL_CELERY_QUEUE": queue,
        "PYTHONUNBUFFERED": "1",
    }


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def start_celery_worker(
    *, queues: str, name: str, env: dict, log, concurrency: int, app: str = "portal"
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def host_side_env(env: dict) -> dict[str, str]:
    """A compute host's environment: no Django settings module (the host's own Celery app reads
    only its environment, vmworker.host_config), the stack's broker named outright, and the host's
    own report key in a 0600 file, as ``manage.py host_key`` provisions it."""
    import tempfile

    from django.conf import settings

    from portal.services.host_keys import host_key_file_write

    host_env = {name: value for name, value in env.items() if name != "DJANGO_SETTINGS_MODULE"}
    host_env["HYPERVM_BROKER_URL"] = settings.CELERY_BROKER_URL
    if env.get("HYPERVM_HOST_NAME"):
        key_file = Path(tempfile.mkdtemp(prefix="hypervm-host-key-")) / "host-report.key"
        host_key_file_write(env["HYPERVM_HOST_NAME"], key_file)
        host_env["HYPERVM_HOST_KEY_FILE"] = str(key_file)
    return host_env


def start_host_worker(*, name: str, env: dict, log) -> subprocess.Popen:
    """The host worker of ``name`` (its own queue, the vmworker Celery app), as ./scripts/run starts it."""
    return start_celery_worker(
        queues=f"host.{name}", name=name, env=host_side_env(env), log=log, concurrency=3, app="vmworker"
    )


@dataclass(frozen=True)
class LiveStack:
    url: str
    queue: str
    log_dir: Path
    env: dict  # every process of the stack runs with it


def embedded_registry_env(registry, secrets_dir: Path) -> dict[str, str]:
    """The test registry as the platform's embedded one, as the run command sets it up: the
    password in a 0600 file, never in the environment."""
    password_file = secrets_dir / "embedded-registry-password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(registry.password)
    return {
        "PORTAL_EMBEDDED_REGISTRY_URL": f"http://{registry.host_port}",
        "PORTAL_EMBEDDED_REGISTRY_USERNAME": registry.username,
        "PORTAL_EMBEDDED_REGISTRY_PASSWORD_FILE": str(password_file),
    }


@pytest.fixture(scope="session")
def celery_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@contextmanager
def web_server(*, env: dict, log_path: Path) -> Iterator[tuple[str, dict]]:
    """daphne on a free port of the portal's own host, with ``env`` and PORTAL_PUBLIC_URL set to
    where it serves; yields (url, env) once it answers, stops it on exit."""
    port = free_port(PORTAL_HOST)
    url = f"http://{PORTAL_HOST}:{port}"
    env = env | {"PORTAL_PUBLIC_URL": url}
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", PORTAL_HOST, "-p", str(port), "portal.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url + "/login/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or web.poll() is not None:
                    raise RuntimeError(f"web server did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url, env
    finally:
        _stop(web)


@contextmanager
def running_stack(*, env: dict, queue: str, log_dir: Path) -> Iterator[LiveStack]:
    """daphne + a Celery worker on ``queue``, both with ``env``; stopped on exit. Tests that need
    settings of their own (a low rate limit, an allowlisted port) start one beside ``live_stack``."""
    with web_server(env=env, log_path=log_dir / "web.log") as (url, env), open(log_dir / "worker.log", "wb") as log:
        worker = start_celery_worker(queues=queue, name=queue, env=env, log=log, concurrency=1)
        try:
            yield LiveStack(url=url, queue=queue, log_dir=log_dir, env=env)
        finally:
            _stop(worker)


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, celery_queue, registry, tmp_path_factory):
    """daphne + a Celery worker on this session's queue, the test registry as the embedded one;
    yields LiveStack."""
    log_dir = tmp_path_factory.mktemp("live-stack")
    env = stack_env(celery_queue) | embedded_registry_env(registry, tmp_path_factory.mktemp("secrets"))
    with running_stack(env=env, queue=celery_queue, log_dir=log_dir) as stack:
        yield stack


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def _signal_tree(pid: int, signum: int) -> None:
    """Signal a process and its descendants (not its process group: the test runner's own)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue.extend(_children(current))
    for target in pids:
        try:
            os.kill(target, signum)
        except ProcessLookupError:
            pass


@dataclass
class HostWorker:
    name: str
    state_dir: Path
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            _stop(self.process)


@pytest.fixture(scope="session")
def celery_beat(live_stack, tmp_path_factory):
    """Celery beat on this session's queue: the reconciler runs every few seconds."""
    log_dir = tmp_path_factory.mktemp("beat")
    with open(log_dir / "beat.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "beat",
                "--schedule",
                str(log_dir / "schedule"),
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=live_stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        _stop(process)


class HostPool:
    """Celery workers acting as compute hosts, one per name (each with its own queue and
    runtime state dir), all on this machine."""

    def __init__(self, live_stack):
        self.live_stack = live_stack
        self.workers: dict[str, HostWorker] = {}

    def start(self, name: str, *, warm_pool: str | None = None) -> HostWorker:
        """``warm_pool``: the host's HYPERVM_WARM_POOL (default: HYPERVM_TEST_WARM_POOL, or none)."""
        import tempfile

        if name in self.workers and self.workers[name].process.poll() is None:
            return self.workers[name]
        full_name = f"{self.live_stack.queue}-{name}"
        if name in self.workers:
            # A new machine under an old name: the old one's storage pool (its path in the old
            # state dir) went with it, or the new worker would find it and refuse to use it.
            remove_storage_pool(f"hvm-vol-{full_name}")
        state_dir = Path(tempfile.mkdtemp(prefix=f"hypervm-{full_name}-", dir="/var/tmp"))
        state_dir.chmod(0o755)
        log_path = self.live_stack.log_dir / f"host-{name}.log"
        env = self.live_stack.env | {"HYPERVM_HOST_NAME": full_name, "HYPERVM_STATE_DIR": str(state_dir)}
        # No warm pool (vmworker.warm_pool) unless HYPERVM_TEST_WARM_POOL asks for one: the
        # suite's timings stay those of cold boots, and no blank VM takes CPU from its boots.
        env["HYPERVM_WARM_POOL"] = os.environ.get("HYPERVM_TEST_WARM_POOL", "") if warm_pool is None else warm_pool
        # Registries a test put on the platform's allowlist after the stack started (the host
        # checks an image's registry against it before it pulls).
        allowlist = os.environ.get("PORTAL_REGISTRY_HOST_ALLOWLIST")
        if allowlist:
            env["PORTAL_REGISTRY_HOST_ALLOWLIST"] = allowlist
        with open(log_path, "ab") as log:
            process = start_host_worker(name=full_name, env=env, log=log)
        self.workers[name] = HostWorker(name=full_name, state_dir=state_dir, process=process, log_path=log_path)
        return self.workers[name]

    def crash(self, name: str) -> None:
        """SIGKILL the host's worker and its pool children (a crash mid-task); its VMs, children
        of libvirtd, keep running."""
        _signal_tree(self.workers[name].process.pid, signal.SIGKILL)
        self.workers[name].process.wait(timeout=10)

    def freeze(self, name: str) -> None:
        """SIGSTOP the host's worker and its children: no heartbeats, no tasks, as if cut off
        from the portal; its VMs keep running. thaw() resumes it."""
        _signal_tree(self.workers[name].process.pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        _signal_tree(self.workers[name].process.pid, signal.SIGCONT)

    def restart(self, name: str) -> HostWorker:
        """Start the host's worker again with the same state dir (a worker restart on the
        same machine: its VMs and instance folders are still there)."""
        old = self.workers[name]
        if old.process.poll() is None:
            raise RuntimeError(f"host {name} is still running")
        env = self.live_stack.env | {"HYPERVM_HOST_NAME": old.name, "HYPERVM_STATE_DIR": str(old.state_dir)}
        allowlist = os.environ.get("PORTAL_REGISTRY_HOST_ALLOWLIST")
        if allowlist:
            env["PORTAL_REGISTRY_HOST_ALLOWLIST"] = allowlist
        with open(old.log_path, "ab") as log:
            process = start_host_worker(name=old.name, env=env, log=log)
        self.workers[name] = HostWorker(name=old.name, state_dir=old.state_dir, process=process, log_path=old.log_path)
        return self.workers[name]

    def kill_machine(self, name: str) -> None:
        """As if the machine died: its worker stops heartbeating and its VMs are gone."""
        from vmworker import warm_pool
        from vmworker.runtime import HyperVMRuntime, RuntimeSettings

        worker = self.workers[name]
        worker.stop()
        runtime = HyperVMRuntime(RuntimeSettings(state_dir=worker.state_dir))
        for status in runtime.list_instances():
            runtime.remove(status.instance_id)
        warm_pool.discard_all(runtime)  # a worker's pooled VMs (HYPERVM_TEST_WARM_POOL) outlive it

    def kill_all_but(self, *keep: str) -> None:
        for name, worker in self.workers.items():
            if name not in keep and worker.process.poll() is None:
                self.kill_machine(name)

    def close(self) -> None:
        import shutil

        for name, worker in self.workers.items():
            self.kill_machine(name)
            remove_storage_pool(f"hvm-vol-{worker.name}")  # its state dir goes, so does its pool
            shutil.rmtree(worker.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def compute_hosts(live_stack, celery_beat):
    """A HostPool; every worker is stopped and every VM it made destroyed at the end."""
    pool = HostPool(live_stack)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def one_host(compute_hosts):
    """The session's host worker h1, alone, registered and the only host up: the hosts whose
    workers were stopped are made to look silent past the heartbeat expiry, so placement never
    picks one in the seconds before the beat's expiry would (an instance placed there was lost)."""
    from datetime import timedelta

    from django.db import close_old_connections
    from django.utils import timezone

    from portal.choices import HostState
    from portal.models import ComputeHost

    compute_hosts.kill_all_but("h1")
    worker = compute_hosts.start("h1")
    silent_since = timezone.now() - timedelta(days=1)
    deadline = time.monotonic() + 60
    while True:
        close_old_connections()
        others = ComputeHost.objects.exclude(name=worker.name).filter(state=HostState.UP)
        others.update(last_heartbeat_at=silent_since)  # again: a queued last heartbeat may land late
        if ComputeHost.objects.filter(name=worker.name).exists() and not others.exists():
            return worker
        if time.monotonic() > deadline:
            raise AssertionError("host h1 did not register, or other hosts stayed up")
        time.sleep(0.5)
