"""The run command's demo image: `manage.py push_demo_image` pushes demo/hello:latest, and only
that, to a real registry; bad credentials are a clear error, not a traceback."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tenants.demo_image import DEMO_REFERENCE_PATH
from tenants.registry_server import start_registry, stop_registry


def _catalog(registry) -> list[str]:
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{registry.host_port}/v2/_catalog", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["repositories"]


def _push(registry, authfile: Path, tmp_path: Path) -> None:
    call_command(
        "push_demo_image", "--registry", registry.host_port, "--authfile", str(authfile), "--cache-dir", str(tmp_path)
    )


@pytest.fixture
def empty_registry(tmp_path: Path):
    registry = start_registry(tmp_path / "registry")
    yield registry
    stop_registry(registry)


def test_push_demo_image_pushes_only_the_demo_image(empty_registry, tmp_path: Path, capsys) -> None:
    authfile = empty_registry.write_authfile(tmp_path / "auth.json")
    _push(empty_registry, authfile, tmp_path)
    reference, digest = capsys.readouterr().out.split()
    assert reference == f"{empty_registry.host_port}/{DEMO_REFERENCE_PATH}"
    assert digest.startswith("sha256:")
    assert _catalog(empty_registry) == ["demo/hello"]


def test_push_demo_image_with_wrong_credentials_is_a_command_error(empty_registry, tmp_path: Path) -> None:
    authfile = empty_registry.write_authfile(tmp_path / "auth.json", password="not-the-password")
    with pytest.raises(CommandError, match="pushing the demo image failed"):
        _push(empty_registry, authfile, tmp_path)
    assert _catalog(empty_registry) == []
