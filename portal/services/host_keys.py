"""Host report keys (vmworker.report_signing): the portal's master key, each host's key derived
from it, and the check every host-to-portal task makes before it reads a report. A report that
is unsigned, signed with another host's key or changed on the way is dropped (logged, never
applied): a host speaks only for itself, and only a provisioned host registers. The portal's
commands to a host (``host_command_send``) are signed with that host's key the same way, and the
host drops any other (vmworker.tasks): no host can put a command on another host's queue. A signed report
carries when it was sent: one older than its task allows is refused too (another host that read
it off the broker cannot replay a dead host's heartbeats to keep it up)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portal.secrets import read_or_create_secret
from vmworker.report_signing import derive_host_key, sign, verify

logger = logging.getLogger(__name__)
CLOCK_SKEW_S = 60  # a host's clock may run ahead of the portal's by this much


MASTER_KEY_MIN_CHARS = 32


@cache
def _master_key(path: str) -> bytes:
    key = read_or_create_secret(Path(path), make=lambda: secrets.token_hex(32))
    if len(key) < MASTER_KEY_MIN_CHARS:  # every host's key would be guessable
        raise ImproperlyConfigured(f"{path} holds no host report master key (at least 32 characters)")
    return key.encode()


def host_key(host_name: str) -> bytes:
    return derive_host_key(_master_key(str(settings.HOST_REPORT_KEY_FILE)), host_name)


def host_key_file_write(host_name: str, path: Path) -> None:
    """The host's key, hex, in a file only its owner reads (the host's HYPERVM_HOST_KEY_FILE)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(host_key(host_name).hex() + "\n")
    os.replace(tmp, path)


def report_from_host(*, task: str, host_name, args: list, kwargs: dict, signature, max_age_s: float) -> bool:
    """True when ``host_name``'s key signed exactly this task, ``kwargs["sent_at"]`` (signed with it)
    at most ``max_age_s`` ago (a report read off the broker and sent again later is refused), or
    when signatures are not required."""
    if not settings.HOST_REPORTS_SIGNED:
        return True
    try:
        signed = isinstance(host_name, str) and bool(host_name)
        signed = signed and verify(host_key(host_name), task, args, kwargs, signature)
    except (UnicodeError, ValueError, TypeError):  # a name no host key is made of
        signed = False
    sent_at = kwargs.get("sent_at")
    fresh = isinstance(sent_at, int | float) and -CLOCK_SKEW_S <= time.time() - sent_at <= max_age_s
    if signed and fresh:
        return True
    logger.warning(
        "host_report.signature_refused",
        extra={"task": task, "host": repr(host_name)[:128], "signed": bool(signature), "verified": signed},
    )
    return False


def host_command_send(host_name: str, task: str, args: list, *, queue: str, **options) -> None:
    """A command (a host task) for ``host_name``, signed with its key over the task, its positional
    arguments and when it was sent (vmworker.tasks checks it before it acts)."""
    from celery import current_app

    kwargs = {"sent_at": time.time()}
    kwargs["signature"] = sign(host_key(host_name), task, args, kwargs)
    current_app.send_task(task, args=args, kwargs=kwargs, queue=queue, **options)
