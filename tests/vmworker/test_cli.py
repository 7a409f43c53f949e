"""Acceptance tests of ``python -m vmworker`` against the real stack: a docker-registry with
auth on 127.0.0.1, skopeo/umoci, libvirtd + QEMU (TCG here) booting the real kernel."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.live_stack import free_port
from tests.support.oci_images import PRINTER_STDERR_LINE, PRINTER_STDOUT_LINES

pytestmark = [pytest.mark.vm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 180


@pytest.fixture
def cli(runtime_state_dir, runtime):
    """cli(*args) -> CompletedProcess of ``python -m vmworker --state-dir ... args``."""

    def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "vmworker", "--state-dir", str(runtime_state_dir), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=check,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )

    return run


@pytest.fixture
def auth(registry_authfile):
    return ["--authfile", str(registry_authfile), "--tls-verify=false"]


def our_domains() -> set[str]:
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, check=True
    ).stdout
    return {name for name in listing.split() if name.startswith("hvm-") and not name.startswith("hvm-probe")}


def test_run_streams_output_and_returns_the_exit_code(cli, auth, test_images):
    result = cli("run", *auth, test_images["printer"].reference)
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == list(PRINTER_STDOUT_LINES)
    assert PRINTER_STDERR_LINE in result.stderr.splitlines()


def test_entrypoint_and_args_after_the_image_replace_the_images_own(cli, auth, test_images):
    result = cli(
        "run",
        *auth,
        "-e",
        "WHO=operator",
        "--entrypoint",
        "/bin/sh",
        test_images["printer"].reference,
        "--",
        "-c",
        'echo "hi $WHO"; exit 7',
    )
    assert (result.returncode, result.stdout.strip()) == (7, "hi operator"), result.stderr


def test_detached_http_image_serves_its_page_on_the_published_port(cli, auth, test_images):
    port = free_port()
    started = cli(
        "run", *auth, "-d", "--name", "web", "--publish", f"127.0.0.1:{port}:8080", test_images["httpd"].reference
    )
    assert started.returncode == 0, started.stderr
    instance_id = started.stdout.strip()
    page = None
    deadline = time.monotonic() + 30
    while page is None and time.monotonic() < deadline:
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3).read().decode()
        except OSError:
            time.sleep(0.3)
    assert page is not None and "Hello from a HyperVM" in page
    listing = cli("ls").stdout
    assert instance_id in listing and "running" in listing and f"127.0.0.1:{port}->8080" in listing
    assert cli("rm", "web").returncode == 0
    assert f"hvm-{instance_id}" not in our_domains()


def test_stop_delivers_sigterm_and_reports_exit_0(cli, auth, test_images):
    started = cli("run", *auth, "-d", "--name", "graceful", test_images["sigterm"].reference)
    assert started.returncode == 0, started.stderr
    stopped = cli("stop", "graceful", "--timeout", "10")
    assert stopped.returncode == 0 and "exited with 0" in stopped.stdout, stopped.stderr
    assert "got SIGTERM" in cli("logs", "graceful").stdout
    assert f"hvm-{started.stdout.strip()}" not in our_domains()


def _leaves_nothing(runtime_state_dir: Path, domains_before: set[str], instances_before: set[str]) -> None:
    assert our_domains() == domains_before
    assert {p.name for p in (runtime_state_dir / "instances").iterdir()} == instances_before
    assert not list((runtime_state_dir / "images" / "work").iterdir())


@pytest.mark.parametrize(
    "case,expected",
    [
        ("wrong-credentials", "refused the credentials"),
        ("unknown-image", "not found"),
        ("no-entrypoint", "no Entrypoint or Cmd"),
    ],
)
def test_errors_are_one_clear_line_and_leave_nothing(
    cli, auth, test_images, registry, runtime_state_dir, tmp_path, case, expected
):
    domains_before = our_domains()
    instances_before = {p.name for p in (runtime_state_dir / "instances").iterdir()}
    args = list(auth)
    image = test_images["printer"].reference
    if case == "wrong-credentials":
        bad = tmp_path / "bad-auth.json"
        token = base64.b64encode(f"{registry.username}:wrong-password".encode()).decode()
        bad.write_text(json.dumps({"auths": {registry.host_port: {"auth": token}}}))
        args = ["--authfile", str(bad), "--tls-verify=false"]
    elif case == "unknown-image":
        image = f"{registry.host_port}/hypervm-test/does-not-exist:latest"
    else:
        image = test_images["noentry"].reference
    result = cli("run", *args, image)
    assert result.returncode == 125
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert registry.password not in result.stderr + result.stdout
    _leaves_nothing(runtime_state_dir, domains_before, instances_before)
