"""The throw-away stack the portal benchmarks share: an admin and a tenant, a registry on 127.0.0.1 with
the HTTP image pushed and registered for the tenant, and one compute-host worker with its own queue.
All of it goes at the end. Import after ``django.setup()``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.contrib.auth import get_user_model
from django.db import close_old_connections

from portal.models import ComputeHost
from tenants.access import tenant_access_resolve
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.support.live_stack import PORTAL_HOST, free_port, host_side_env
from tests.support.oci_images import HTTPD, build_and_push
from tests.support.registry import LocalRegistry, start_registry, stop_registry
from tests.support.tenant_access import registry_add
from vmworker import warm_pool
from vmworker.runtime import HyperVMRuntime, RuntimeSettings

ROOT = Path(__file__).resolve().parents[1]
STATE_DIRS = ("host", "runtime")  # HyperVM state directories below scratch whose leftover VMs are removed


def wait_for(what: str, predicate, timeout_s: float, poll_s: float = 0.2):
    """The first true value of ``predicate``, read with fresh database connections; TimeoutError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        close_old_connections()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_s)


@dataclass
class BenchStack:
    scratch: Path
    name: str  # the user, tenant slug, compute host and worker name
    user: Any
    tenant: Tenant
    access: Any
    registry: LocalRegistry
    image: str
    env: dict[str, str]  # for the processes started here
    log: IO[bytes]
    processes: list[subprocess.Popen] = field(default_factory=list)
    others_up: list[int] = field(default_factory=list)  # other hosts marked down, put back up at the end
    worker: subprocess.Popen | None = None  # the compute-host worker (start_worker)

    @property
    def queue(self) -> str:
        return f"bench-{self.name}"

    @property
    def host_dir(self) -> Path:
        return self.scratch / "host"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.append(
            subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=self.log, stderr=subprocess.STDOUT)
        )

    def start_worker(self, concurrency: int) -> None:
        """A portal worker on the bench queue (tasks sent from this process go to it) and the
        compute-host worker (its own Celery app, ``concurrency`` processes) on the host's queue."""
        os.environ["PORTAL_CELERY_QUEUE"] = self.queue
        from django.conf import settings

        from portal.celery import app as celery_app

        settings.CELERY_TASK_DEFAULT_QUEUE = self.queue
        celery_app.conf.task_default_queue = self.queue
        portal = [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", self.queue, "-c", "2"]
        self.spawn(portal + ["-n", f"portal-{self.name}@%h", "--without-gossip", "--without-mingle"])
        self._start_host_worker(concurrency)

    def _start_host_worker(self, concurrency: int) -> None:
        worker = [sys.executable, "-m", "celery", "-A", "vmworker", "worker", "-Q", f"host.{self.name}"]
        worker += ["-c", str(concurrency), "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle"]
        self.spawn(worker, env=host_side_env(self.env))
        self.worker = self.processes[-1]

    def restart_worker(self, concurrency: int, env: dict[str, str]) -> None:
        """The compute-host worker stopped (SIGTERM: it discards its pooled VMs) and started again
        with ``env`` added to its environment (the portal worker runs on)."""
        self.worker.terminate()
        self.worker.wait(timeout=60)
        self.processes.remove(self.worker)
        self.env = self.env | env
        self._start_host_worker(concurrency)

    def start_web(self) -> str:
        """daphne on a free port of the portal's own host (never the apps' publish address: they
        would share its cookies, portal.public_host), with PORTAL_PUBLIC_URL saying so; its URL."""
        port = free_port(PORTAL_HOST)
        url = f"http://{PORTAL_HOST}:{port}"
        self.env = self.env | {"PORTAL_PUBLIC_URL": url}
        self.spawn([sys.executable, "-m", "daphne", "-b", PORTAL_HOST, "-p", str(port), "portal.asgi:application"])
        return url

    def claim_placement(self, timeout_s: float, *, restore_others: bool) -> None:
        """Waits for the worker's host to register, then marks the other hosts down so that placement
        picks only the bench host. With ``restore_others`` only the hosts that were up are marked
        down, and they are put back up at the end; without, all others are marked down and stay so."""
        wait_for("the host worker to register", lambda: ComputeHost.objects.filter(name=self.name).exists(), timeout_s)
        others = ComputeHost.objects.exclude(name=self.name)
        if restore_others:
            self.others_up = list(others.filter(state="up").values_list("pk", flat=True))
            others = ComputeHost.objects.filter(pk__in=self.others_up)
        others.update(state="down")

    def remove(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()
        for state_dir in STATE_DIRS:
            if (self.scratch / state_dir).exists():
                leftover = HyperVMRuntime(RuntimeSettings(state_dir=self.scratch / state_dir))
                for status in leftover.list_instances():
                    leftover.remove(status.instance_id)
                warm_pool.discard_all(leftover)  # the host worker's pooled VMs outlive it
        Tenant.objects.filter(pk=self.tenant.pk).delete()
        ComputeHost.objects.filter(name=self.name).delete()
        ComputeHost.objects.filter(pk__in=self.others_up).update(state="up")
        get_user_model().objects.filter(pk=self.user.pk).delete()
        stop_registry(self.registry)
        shutil.rmtree(self.scratch, ignore_errors=True)


@contextmanager
def bench_stack(kind: str, tenant_name: str, env: dict[str, str]) -> Iterator[BenchStack]:
    """``kind`` names the scratch directory; ``env`` is added to this process's for the processes."""
    scratch = Path(tempfile.mkdtemp(prefix=f"hypervm-bench-{kind}-", dir="/var/tmp"))
    scratch.chmod(0o755)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    user = get_user_model().objects.create(username=name, is_staff=True)  # platform admins create tenants
    tenant = tenant_create(actor=user, slug=name, name=tenant_name, owner=user)
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    registry = start_registry(scratch / "registry")
    stack = BenchStack(
        scratch=scratch,
        name=name,
        user=user,
        tenant=tenant,
        access=access,
        registry=registry,
        image="",
        env=os.environ
        | {
            "PORTAL_CELERY_QUEUE": f"bench-{name}",
            "HYPERVM_HOST_NAME": name,
            "HYPERVM_STATE_DIR": str(scratch / "host"),
        }
        | env,
        log=open(scratch / "processes.log", "wb"),  # noqa: SIM115
    )
    # The bench registry is on loopback, which the platform refuses for tenant registries unless
    # it vouches for it: on its allowlist, here and in the processes started from this stack.
    from django.conf import settings

    allowlist = [e for e in os.environ.get("PORTAL_REGISTRY_HOST_ALLOWLIST", "").split(",") if e]
    stack.env = stack.env | {"PORTAL_REGISTRY_HOST_ALLOWLIST": ",".join([*allowlist, registry.host_port])}
    settings.REGISTRY_HOST_ALLOWLIST = sorted({*settings.REGISTRY_HOST_ALLOWLIST, registry.host_port})
    try:
        authfile = registry.write_authfile(scratch / "auth.json")
        stack.image = build_and_push(
            HTTPD, cache_dir=scratch / "layouts", registry=registry.host_port, authfile=authfile
        ).reference
        registry_add(access, registry, name="bench")
        yield stack
    finally:
        stack.remove()
