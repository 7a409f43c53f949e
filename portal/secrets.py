"""Secrets that must never live in the repository are read from files under the state dir,
created with mode 0600 on first use (dev/test), or supplied by the environment (prod)."""

import os
import secrets
from pathlib import Path


def read_or_create_secret(path: Path, *, make=lambda: secrets.token_urlsafe(50)) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = make()
    # O_EXCL: two processes starting at once agree on one secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
