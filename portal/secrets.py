"""Secrets that must never live in the repository are read from files under the state dir,
created with mode 0600 on first use (dev/test), or supplied by the environment (prod).

A secret file any other local user can read is refused, not used: on a shared host the
file's mode is the secret's only protection."""

import os
import secrets
from pathlib import Path
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ImproperlyConfigured(f"{path} is readable by other users (mode {oct(mode)}): chmod 600 it")


def read_secret(path: Path, *, made_by: str) -> str:
    """A secret another program made (``made_by`` says which, for the error)."""
    try:
        _check_private(path)
        return path.read_text().strip()
    except FileNotFoundError:
        raise ImproperlyConfigured(f"{path} is missing: {made_by} makes it") from None


def read_or_create_secret(path: Path, *, make=lambda: secrets.token_urlsafe(50)) -> str:
    try:
        _check_private(path)
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = make()
    # Written whole under a name of its own, then linked into place: two processes starting at
    # once agree on one secret, and none ever reads a file not written yet.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return value


def redis_url(*, host: str, port: int, db: int, password: str) -> str:
    """redis-py's URL form, the password quoted (redis-py unquotes it)."""
    return f"redis://:{quote(password, safe='')}@{host}:{port}/{db}"
