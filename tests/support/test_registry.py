"""The local registry keeps its secrets to root: its http secret (config.yml), htpasswd,
password and authfile are 0600 in a 0700 folder, whatever the caller's umask."""

from __future__ import annotations

import os

from tests.support.registry import start_registry, stop_registry


def test_the_registry_files_are_private_under_a_permissive_umask(tmp_path) -> None:
    old_umask = os.umask(0o022)
    try:
        registry = start_registry(tmp_path / "registry")
    finally:
        os.umask(old_umask)
    try:
        registry.write_authfile(registry.work_dir / "auth.json")
        modes = {
            path.name: oct(path.stat().st_mode & 0o777)
            for path in [registry.work_dir, *registry.work_dir.iterdir()]
            if path.name != "storage"
        }
    finally:
        stop_registry(registry)

    assert modes == {
        "registry": "0o700",
        "config.yml": "0o600",
        "htpasswd": "0o600",
        "registry.log": "0o600",
        "auth.json": "0o600",
    }
