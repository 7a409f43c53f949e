"""Turning an unpacked tree into one read-only filesystem image file.

erofs (preferred): ``mkfs.erofs --preserve-mtime`` with a UUID derived from the manifest digest
and SOURCE_DATE_EPOCH set to the image's creation time, which fixes the superblock time and
clamps any newer mtime (directories touched during unpack): the same image digest gives a
byte-identical file. Uncompressed by default, which is fastest to build and to read under TCG.
ext4 is the fallback for guests without erofs: ``mkfs.ext4 -d`` with a fixed UUID, hash seed and
E2FSPROGS_FAKE_TIME, no journal, sized from the tree.

Ownership, setuid bits, xattrs and device nodes are kept: they are for the guest. The host never
mounts these files.

Bounded: with ``max_tree_bytes`` (the unpack limit), mkfs runs under RLIMIT_FSIZE of
``fs_image_max_bytes`` (the ext4 sizing below applied to a tree of the limit: any image of a tree
within the limit fits), so the file it writes cannot grow past it, whatever the tree holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

from vmworker.images.errors import ImageError
from vmworker.images.unpack import OverLimit, limited_argv

FS_TYPES = ("erofs", "ext4")
MKFS_EROFS = "mkfs.erofs"
MKFS_EXT4 = "mkfs.ext4"
EXT4_BLOCK_BYTES = 4096


def uuid_for_digest(manifest_digest: str) -> str:
    return str(uuid.UUID(bytes=bytes.fromhex(manifest_digest.split(":", 1)[1])[:16]))


def _tree_usage(tree: Path) -> tuple[int, int]:
    """(bytes rounded up to blocks, inode count), without following symlinks."""
    total_bytes = 0
    inodes = 1
    for directory, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            stat = os.lstat(os.path.join(directory, name))
            blocks = -(-stat.st_size // EXT4_BLOCK_BYTES)
            total_bytes += max(blocks, 1) * EXT4_BLOCK_BYTES
            inodes += 1
    return total_bytes, inodes


def _ext4_size_bytes(data_bytes: int) -> int:
    # Room for metadata and inode tables on top of the data; ext4 needs some slack.
    return int(data_bytes * 1.25) + 16 * 1024 * 1024


def fs_image_max_bytes(max_tree_bytes: int) -> int:
    return _ext4_size_bytes(max_tree_bytes)


def _run(argv: list[str], *, env: dict[str, str], timeout_s: float, what: str, bounded: bool = False) -> None:
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ImageError(f"building the {what} image timed out after {timeout_s:.0f} s") from error
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace")
        # C tools die of SIGXFSZ at the limit (the default action); others report EFBIG.
        if bounded and (completed.returncode == -signal.SIGXFSZ or "file too large" in stderr.lower()):
            raise OverLimit
        last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else "no error output"
        raise ImageError(f"building the {what} image failed: {last}", detail=stderr[-2000:])


def _base_env(scratch_dir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "TMPDIR": str(scratch_dir),
        "LC_ALL": "C",
    }


def make_filesystem_image(
    tree: Path,
    output: Path,
    *,
    fs_type: str,
    manifest_digest: str,
    source_date_epoch: int,
    timeout_s: float,
    max_tree_bytes: int | None = None,
) -> None:
    fs_uuid = uuid_for_digest(manifest_digest)
    env = _base_env(output.parent)
    if fs_type == "erofs":
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
        argv = [MKFS_EROFS, "--quiet", "--preserve-mtime", f"-U{fs_uuid}", str(output), str(tree)]
    elif fs_type == "ext4":
        env["E2FSPROGS_FAKE_TIME"] = str(source_date_epoch)
        data_bytes, inodes = _tree_usage(tree)
        size_bytes = _ext4_size_bytes(data_bytes)
        argv = [
            MKFS_EXT4,
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            str(EXT4_BLOCK_BYTES),
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-N",
            str(inodes + 64),
            "-U",
            fs_uuid,
            "-E",
            f"hash_seed={fs_uuid},root_owner=0:0",
            "-d",
            str(tree),
            str(output),
            f"{size_bytes // 1024}k",
        ]
    else:
        raise ValueError(f"unknown fs_type {fs_type!r}; expected one of {FS_TYPES}")
    if max_tree_bytes is not None:
        max_file_bytes = fs_image_max_bytes(max_tree_bytes)
        argv = limited_argv(argv, max_file_bytes=max_file_bytes)
    _run(argv, env=env, timeout_s=timeout_s, what=fs_type, bounded=max_tree_bytes is not None)
    if max_tree_bytes is not None and output.stat().st_size > fs_image_max_bytes(max_tree_bytes):
        raise OverLimit
