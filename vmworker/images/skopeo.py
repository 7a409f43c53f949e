"""Running skopeo against a registry without leaking credentials or depending on host config.

A ``SkopeoSession`` lives in a private 0700 directory (inside the caller's work dir) holding a
0600 authfile, an accept-anything signature policy (trust comes from pinning digests, checked by
us and by skopeo), an empty registries.conf and a HOME/TMPDIR/XDG dirs of its own: skopeo then
reads no host-wide credentials, mirrors or proxies by accident, and leaves no temp files outside
the work dir. The authfile reaches skopeo through REGISTRY_AUTH_FILE, never on argv.

skopeo's stderr is mapped to our errors by ``classify_failure``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmworker.images.credentials import RegistryCredentials, redact, write_authfile
from vmworker.images.errors import (
    ImageError,
    ImageInvalid,
    ImageNotFound,
    RegistryUnauthorized,
    RegistryUnavailable,
)
from vmworker.images.reference import ImageReference

logger = logging.getLogger("vmworker.images.skopeo")

SKOPEO = "skopeo"
PASSTHROUGH_ENV = (
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
POLICY_JSON = '{"default": [{"type": "insecureAcceptAnything"}]}\n'
DETAIL_MAX_CHARS = 2000


@dataclass(frozen=True)
class SkopeoResult:
    stdout: bytes
    argv: tuple[str, ...]


class SkopeoSession:
    """One registry, one set of credentials, one private directory (removed by the caller)."""

    def __init__(
        self,
        directory: Path,
        reference: ImageReference,
        credentials: RegistryCredentials | None,
        *,
        tls_verify: bool,
        command_timeout_s: float,
    ) -> None:
        self.directory = directory
        self.reference = reference
        self.credentials = credentials
        self.tls_verify = tls_verify
        self.command_timeout_s = command_timeout_s
        self.argv_log: list[tuple[str, ...]] = []  # every argv run, for audits and tests
        directory.mkdir(mode=0o700)
        for sub in ("home", "tmp", "run", "config", "registries.d"):
            (directory / sub).mkdir(mode=0o700)
        self.authfile = directory / "auth.json"
        write_authfile(self.authfile, reference.registry_host, credentials)
        self.policy = directory / "policy.json"
        self.policy.write_text(POLICY_JSON)
        self.registries_conf = directory / "registries.conf"
        self.registries_conf.write_text("")

    def _env(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(
            HOME=str(self.directory / "home"),
            TMPDIR=str(self.directory / "tmp"),
            XDG_RUNTIME_DIR=str(self.directory / "run"),
            XDG_CONFIG_HOME=str(self.directory / "config"),
            REGISTRY_AUTH_FILE=str(self.authfile),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            LC_ALL="C",
        )
        return env

    def _global_argv(self) -> list[str]:
        return [
            SKOPEO,
            "--policy",
            str(self.policy),
            "--registries.d",
            str(self.directory / "registries.d"),
            "--command-timeout",
            f"{int(self.command_timeout_s)}s",
        ]

    def _tls_flag(self, name: str) -> str:
        return f"--{name}={'true' if self.tls_verify else 'false'}"

    def run(self, argv: list[str]) -> SkopeoResult:
        full_argv = tuple(self._global_argv() + argv)
        self.argv_log.append(full_argv)
        try:
            completed = subprocess.run(
                full_argv,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.command_timeout_s + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RegistryUnavailable(
                f"timed out after {self.command_timeout_s:.0f} s talking to registry {self.reference.registry_host}"
            ) from error
        if completed.returncode != 0:
            stderr = redact(completed.stderr.decode(errors="replace"), self.credentials)
            raise classify_failure(self.reference, stderr, has_credentials=self.credentials is not None)
        return SkopeoResult(stdout=completed.stdout, argv=full_argv)

    def inspect_raw(self, reference: ImageReference) -> bytes:
        """The manifest (or index) bytes exactly as the registry serves them."""
        return self.run(["inspect", "--raw", self._tls_flag("tls-verify"), reference.docker_transport()]).stdout

    def copy_to_oci_layout(self, reference: ImageReference, layout: Path, tag: str) -> None:
        self.run(
            [
                "copy",
                "--quiet",
                self._tls_flag("src-tls-verify"),
                reference.docker_transport(),
                f"oci:{layout}:{tag}",
            ]
        )


def _last_message(stderr: str) -> str:
    """skopeo logs `time=... level=fatal msg="..."`; keep the msg, one line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no error output"
    last = lines[-1]
    marker = 'msg="'
    if marker in last:
        last = last.split(marker, 1)[1].rstrip('"')
    return last.replace('\\"', '"')[:300]


_UNREACHABLE_SIGNS = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "connection reset by peer",
    "tls handshake timeout",
    "timeout awaiting response headers",
    "unexpected eof",
)
_HTTP_STATUS = re.compile(r"(?:http status|status code|statuscode)(?: from registry)?[:= ]+(\d{3})")


def classify_failure(reference: ImageReference, stderr: str, *, has_credentials: bool) -> ImageError:
    detail = stderr[-DETAIL_MAX_CHARS:]
    lowered = stderr.lower()
    image = str(reference)
    domain = reference.registry_host
    if ("unauthorized" in lowered or "authentication required" in lowered) and not has_credentials:
        return RegistryUnauthorized(f"registry {domain} requires credentials for {reference.repository}", detail=detail)
    if "unauthorized" in lowered or "authentication required" in lowered:
        return RegistryUnauthorized(
            f"registry {domain} refused the credentials for {reference.repository}", detail=detail
        )
    if "denied" in lowered:
        # Docker Hub answers "denied" for private and for nonexistent repositories alike.
        return RegistryUnauthorized(
            f"registry {domain} denied access to {reference.repository} (wrong credentials or no such repository)",
            detail=detail,
        )
    if "manifest unknown" in lowered or "name unknown" in lowered or "not found" in lowered:
        return ImageNotFound(f"image {image} not found", detail=detail)
    if "server gave http response to https client" in lowered:
        return ImageError(
            f"registry {domain} speaks plain HTTP; allow it with TLS verification off",
            detail=detail,
        )
    if "x509" in lowered or "certificate" in lowered or "tls:" in lowered:
        return ImageError(f"TLS verification of registry {domain} failed", detail=detail)
    if any(sign in lowered for sign in _UNREACHABLE_SIGNS):
        return RegistryUnavailable(f"cannot reach registry {domain}", detail=detail)
    status = _HTTP_STATUS.search(lowered)
    if status and (status.group(1).startswith("5") or status.group(1) == "429"):
        return RegistryUnavailable(f"registry {domain} answered HTTP {status.group(1)}; try again later", detail=detail)
    if "digest" in lowered and ("mismatch" in lowered or "did not match" in lowered):
        return ImageInvalid(f"image {image} failed digest verification", detail=detail)
    if "size" in lowered and "mismatch" in lowered:
        return ImageInvalid(f"image {image} has a blob of the wrong size", detail=detail)
    return ImageError(f"pulling {image} failed: {_last_message(stderr)}", detail=detail)
