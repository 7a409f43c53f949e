"""Files of an instance that hold tenant data (records, saved log positions with fragments of
the app's output): written 0600 from their creation, whatever the worker's umask (the worker
runs with 022 so QEMU can read what it must)."""

import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
