"""pytest fixtures for a real local registry and the test images pushed into it.

Registered from tests/conftest.py (``pytest_plugins = ["tests.support.fixtures"]``).
``registry`` and ``test_images`` are session-scoped: the registry starts once per session and the
four test images are pushed once; built OCI layouts are cached under <repo>/var/ across sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.oci_images import PushedImage, build_and_push_test_images
from tests.support.registry import LocalRegistry, platform_allowlist_add, start_registry, stop_registry

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def oci_image_cache_dir() -> Path:
    path = REPO_ROOT / "var" / "test-oci-images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A docker-registry on 127.0.0.1 with htpasswd auth: .host_port, .username, .password."""
    running = start_registry(tmp_path_factory.mktemp("registry"))
    platform_allowlist_add(running.host_port)  # before live_stack starts, so its processes have it
    try:
        yield running
    finally:
        stop_registry(running)


@pytest.fixture(scope="session")
def registry_authfile(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0600 containers-auth.json holding the registry's real credentials."""
    return registry.write_authfile(tmp_path_factory.mktemp("registry-auth") / "auth.json")


@pytest.fixture(scope="session")
def test_images(registry: LocalRegistry, registry_authfile: Path, oci_image_cache_dir: Path) -> dict[str, PushedImage]:
    """printer, httpd (also demo/hello:latest), sigterm, noentry — pushed once per session."""
    return build_and_push_test_images(
        cache_dir=oci_image_cache_dir, registry=registry.host_port, authfile=registry_authfile
    )
