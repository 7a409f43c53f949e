"""The image builder's CLI, as the portal's run command uses it to seed the local registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.oci_images import (
    DEMO_REFERENCE_PATH,
    HTTPD,
    TEST_RECIPES,
    build_image,
)
from tests.support.registry import LocalRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cli_pushes_every_test_image_and_the_demo_image(
    registry: LocalRegistry, registry_authfile: Path, oci_image_cache_dir: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.oci_images",
            "--registry",
            registry.host_port,
            "--authfile",
            str(registry_authfile),
            "--cache-dir",
            str(oci_image_cache_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    pushed = dict(line.split(" ") for line in result.stdout.splitlines())
    expected_references = {f"{registry.host_port}/{recipe.repository}:latest" for recipe in TEST_RECIPES} | {
        f"{registry.host_port}/{DEMO_REFERENCE_PATH}"
    }
    assert set(pushed) == expected_references
    httpd_digest = build_image(HTTPD, oci_image_cache_dir).manifest_digest
    assert pushed[f"{registry.host_port}/{DEMO_REFERENCE_PATH}"] == httpd_digest
    assert registry.password not in result.stdout + result.stderr


def test_cli_reports_a_refused_push_as_one_error(
    registry: LocalRegistry, tmp_path: Path, oci_image_cache_dir: Path
) -> None:
    wrong_authfile = registry.write_authfile(tmp_path / "wrong.json", password="wrong")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.oci_images",
            "--registry",
            registry.host_port,
            "--authfile",
            str(wrong_authfile),
            "--cache-dir",
            str(oci_image_cache_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: skopeo copy failed:")
    assert "unauthorized" in result.stderr
