"""The platform's services going away and coming back, for the fault tests (tests/portal/test_faults.py).

- libvirtd: really restarted (SIGTERM to the pid in its pid file, then ``libvirtd -d`` as
  scripts/setup starts it); QEMU processes are not its children and run on.
- Redis: the server is shared by every checkout on this machine (each on its own database
  number, scripts/setup), so it is not stopped: what its clients see of a restart of a server that
  keeps nothing on disk is done to the stack's own database: every message in it dropped and every
  client connection on it closed.
- PostgreSQL: the machine's server (not started by this project) is not stopped either: the
  stack's database refuses connections for a while and every connection to it is cut, which is
  what the portal sees of a restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

LIBVIRTD_PID_FILE = Path("/run/libvirtd.pid")
WAIT_S = 60


def _wait(what: str, predicate, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _libvirtd_answers() -> bool:
    result = subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "version"], capture_output=True, timeout=30, check=False
    )
    return result.returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def libvirtd_restart() -> float:
    """Stops libvirtd and starts it again; the seconds it did not answer."""
    pid = int(LIBVIRTD_PID_FILE.read_text().strip())
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _wait("libvirtd to exit", lambda: not _pid_alive(pid))
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    _wait("libvirtd to answer", _libvirtd_answers)
    return time.monotonic() - started


def redis_reset() -> int:
    """The stack's Redis database emptied and every connection on it closed (see the module
    docstring); the number of connections closed."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        database = int(client.connection_pool.connection_kwargs.get("db", 0))
        own = client.client_id()
        client.flushdb()
        closed = 0
        for entry in client.client_list():
            if int(entry.get("db", -1)) == database and int(entry["id"]) != own:
                closed += client.client_kill_filter(_id=entry["id"])
        client.flushdb()  # what was sent while the connections closed
        return closed
    finally:
        client.close()


def _as_postgres(sql: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
        input=sql,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def postgresql_outage(*, seconds: float) -> None:
    """The stack's database takes no connection for ``seconds`` and every open one is cut."""
    from django.db import connection

    name = connection.settings_dict["NAME"]
    quoted = name.replace('"', '""')
    _as_postgres(f'ALTER DATABASE "{quoted}" ALLOW_CONNECTIONS false;')
    try:
        _as_postgres(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name.replace(chr(39), chr(39) * 2)}' AND pid <> pg_backend_pid();"
        )
        time.sleep(seconds)
    finally:
        _as_postgres(f'ALTER DATABASE "{quoted}" ALLOW_CONNECTIONS true;')
        connection.close()
