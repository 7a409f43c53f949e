"""The platform's embedded OCI registry server: Debian's ``docker-registry`` on 127.0.0.1 with
htpasswd auth. ``scripts/run`` serves it (``python -m tenants.registry_server``) as the platform
registry every tenant may pull from (tenants.embedded_registry holds the portal side); the tests
start throwaway ones with start_registry.

The registry binds a free loopback port, keeps its blobs in a directory the caller owns, and logs
every request (the access log is what tests read to prove a refused pull fetched no blob). The
password is random per registry and never reaches any process's argv: htpasswd reads it from stdin.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = Path("/usr/bin/htpasswd")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
DEFAULT_USERNAME = "hypervm"


class RegistryStartError(RuntimeError):
    pass


@dataclass
class LocalRegistry:
    host_port: str  # "127.0.0.1:PORT"
    username: str
    password: str = field(repr=False)
    work_dir: Path
    log_path: Path
    pid: int

    @property
    def storage_dir(self) -> Path:
        return self.work_dir / "storage"

    def write_authfile(self, path: Path, *, username: str | None = None, password: str | None = None) -> Path:
        """Write a containers-auth.json for this registry (mode 0600). Defaults to the real
        credentials; pass others to test refusals."""
        token = f"{username or self.username}:{password or self.password}".encode()
        document = {"auths": {self.host_port: {"auth": base64.b64encode(token).decode()}}}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as authfile:
            json.dump(document, authfile)
        return path

    def blob_paths(self) -> list[Path]:
        blobs_root = self.storage_dir / "docker/registry/v2/blobs"
        return sorted(blobs_root.rglob("data")) if blobs_root.exists() else []

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                finished_pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if finished_pid == self.pid:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_htpasswd(path: Path, username: str, password: str) -> None:
    # -i: the password comes from stdin, so it never shows up in /proc/*/cmdline.
    result = subprocess.run(
        [str(HTPASSWD_BINARY), "-iBn", username],
        input=password.encode(),
        capture_output=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise RegistryStartError(f"htpasswd failed: {result.stderr.decode(errors='replace')}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as htpasswd:
        htpasswd.write(result.stdout.strip() + b"\n")


def _write_private(path: Path, text: str) -> None:
    """0600 from the start (the config holds the registry's http secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # O_CREAT's mode does not change a file an older run made


def _config_yaml(*, port: int, storage_dir: Path, htpasswd_path: Path) -> str:
    return f"""\
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage_dir}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  secret: {secrets.token_hex(16)}
auth:
  htpasswd:
    realm: hypervm
    path: {htpasswd_path}
"""


def _answers_v2(host_port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host_port}/v2/", timeout=1):
            return True
    except urllib.error.HTTPError as error:
        return error.code == 401  # auth is on: a 401 means the registry is up
    except OSError:
        return False


def start_registry(
    work_dir: Path, *, username: str = DEFAULT_USERNAME, port: int | None = None, password: str | None = None
) -> LocalRegistry:
    """Start a registry whose files all live under work_dir (created, 0700). Tests take a
    free port and a fresh random password; the run command passes a fixed port and the
    password it keeps in the state dir."""
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o700)
    (work_dir / "storage").mkdir(exist_ok=True)
    password = password or secrets.token_urlsafe(24)
    htpasswd_path = work_dir / "htpasswd"
    _write_htpasswd(htpasswd_path, username, password)
    log_path = work_dir / "registry.log"
    last_error = "not started"
    attempts = 1 if port else 3  # a free port can be taken between probe and bind
    for _attempt in range(attempts):
        port = port or free_loopback_port()
        config_path = work_dir / "config.yml"
        _write_private(
            config_path, _config_yaml(port=port, storage_dir=work_dir / "storage", htpasswd_path=htpasswd_path)
        )
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            process = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        registry = LocalRegistry(
            host_port=f"127.0.0.1:{port}",
            username=username,
            password=password,
            work_dir=work_dir,
            log_path=log_path,
            pid=process.pid,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_v2(registry.host_port):
                return registry
            time.sleep(0.05)
        last_error = f"exit code {process.poll()}" if process.poll() is not None else "timeout"
        registry.stop()
        port = None if attempts > 1 else port
    raise RegistryStartError(f"docker-registry did not answer /v2/ ({last_error}); log: {log_path.read_text()[-2000:]}")


def stop_registry(registry: LocalRegistry, *, remove_files: bool = True) -> None:
    registry.stop()
    if remove_files:
        shutil.rmtree(registry.work_dir, ignore_errors=True)


def serve_forever(work_dir: Path, *, port: int, username: str) -> int:
    """The embedded local registry of the run command: a fixed port, storage kept in
    work_dir, the password in work_dir/password (0600, made once), an authfile beside it
    for skopeo. Runs until SIGTERM/SIGINT."""
    work_dir.mkdir(parents=True, exist_ok=True)
    password_path = work_dir / "password"
    if not password_path.exists():
        fd = os.open(password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    registry = start_registry(work_dir, username=username, port=port, password=password_path.read_text().strip())
    registry.write_authfile(work_dir / "auth.json")
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    print(f"registry on {registry.host_port} (user {username})", flush=True)
    while not stop:
        try:
            finished_pid, _ = os.waitpid(registry.pid, os.WNOHANG)
        except ChildProcessError:
            return 1
        if finished_pid == registry.pid:
            return 1
        time.sleep(0.5)
    stop_registry(registry, remove_files=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tenants.registry_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--username", default="demo")
    args = parser.parse_args(argv)
    return serve_forever(args.work_dir, port=args.port, username=args.username)


if __name__ == "__main__":
    raise SystemExit(main())
