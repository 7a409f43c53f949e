"""Looking at what a store and a registry hold, for assertions (read-only helpers)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if not path.is_dir())


def work_dir_entries(store_root: Path) -> list[Path]:
    return sorted((store_root / "work").iterdir())


def unexpected_store_files(store_root: Path) -> list[Path]:
    """Anything in the store besides the index, locks and cached images: leftovers."""
    allowed_dirs = {store_root / "images", store_root / "locks", store_root / "work"}
    allowed_files = {store_root / "index.json", store_root / "index.lock"}
    leftovers = []
    for path in store_root.rglob("*"):
        if path in allowed_dirs or path in allowed_files:
            continue
        if path.parent in (store_root / "images", store_root / "locks") and path.is_file():
            continue
        leftovers.append(path)
    return sorted(leftovers)


def blob_requests(registry_log: str) -> list[str]:
    return [line for line in registry_log.splitlines() if "GET /v2/" in line and "/blobs/" in line]


def dangerous_host_files(root: Path) -> list[str]:
    """setuid/setgid files, device nodes, fifos or sockets, or executable files under root."""
    findings = []
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID):
                findings.append(f"setuid/setgid: {path}")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                findings.append(f"special file: {path}")
            if stat.S_ISREG(mode) and mode & 0o111:
                findings.append(f"executable: {path}")
    return findings


def erofs_entry(fs_image: Path, path_in_image: str) -> str | None:
    """dump.erofs's description of one path inside the image, or None when it is absent."""
    result = subprocess.run(
        ["dump.erofs", f"--path={path_in_image}", str(fs_image)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout if result.stdout.startswith("File :") else None


def skopeo_inspect_digest(reference: str, authfile: Path) -> str:
    result = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
        env={"PATH": os.environ["PATH"], "REGISTRY_AUTH_FILE": str(authfile)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)["Digest"]
