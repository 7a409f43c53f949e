"""Registry credentials and the private authfile skopeo reads them from.

Credentials only ever live in memory and in a 0600 authfile inside a 0700 directory the caller
owns; skopeo finds the file through REGISTRY_AUTH_FILE, so neither the secret nor the file's
path is on any argv. ``repr``/``str`` never show the password.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RegistryCredentials:
    username: str
    password: str = field(repr=False)

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in logs or messages."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return tuple(secret for secret in (self.password, token) if secret)


def write_authfile(path: Path, registry_domain: str, credentials: RegistryCredentials | None) -> None:
    """A containers-auth.json with credentials for one registry, or none at all: an empty file
    still matters, it keeps skopeo from falling back to host-wide credentials."""
    auths: dict[str, dict[str, str]] = {}
    if credentials is not None:
        token = f"{credentials.username}:{credentials.password}".encode()
        auths[registry_domain] = {"auth": base64.b64encode(token).decode()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as authfile:
        json.dump({"auths": auths}, authfile)


def redact(text: str, credentials: RegistryCredentials | None) -> str:
    if credentials is None:
        return text
    for secret in credentials.secrets():
        text = text.replace(secret, "***")
    return text
