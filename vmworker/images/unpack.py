"""Unpacking an OCI layout into a directory tree with umoci (never Python's tarfile).

As root, umoci unpacks for real (``umoci raw unpack``): ownership, modes (setuid included),
xattrs/file capabilities and device nodes come out exactly as the image says, because the guest
needs them. umoci resolves every entry, symlink and hardlink target inside the rootfs (securejoin),
so `..`, absolute names and writes through symlinks land inside the tree, and a hardlink whose
target does not exist inside the tree fails the unpack. What keeps the resulting setuid files and
device nodes away from the host is where the tree lives: in the store's 0700 root-only work dir,
for the seconds until the filesystem image is built, then deleted. Nothing on the host ever
executes or opens anything inside it; the guest sees it only through the read-only image.

Without root, ``--rootless`` is used (ownership lost, device nodes become empty files).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmworker.images.errors import ImageError, ImageInvalid

UMOCI = "umoci"


def _umoci_message(stderr: str) -> str:
    lines = [line.strip(" \t•⨯") for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else "no error output")[:300]


def unpack_rootfs(layout: Path, tag: str, rootfs: Path, *, image: str, timeout_s: float) -> None:
    argv = [UMOCI, "--log", "error", "raw", "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout}:{tag}", str(rootfs)]
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(layout.parent)},
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ImageError(f"unpacking {image} timed out after {timeout_s:.0f} s") from error
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace")
        raise ImageInvalid(
            f"image {image} has a layer that cannot be unpacked safely: {_umoci_message(stderr)}",
            detail=stderr[-2000:],
        )
