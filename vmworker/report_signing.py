"""What a compute host sends the portal is signed with the host's own key, so that one host (or
anything else that can write to the broker) cannot speak for another: report on another host's
instances, register a host the platform did not provision, or drop another host's volumes.

- A host's key is derived from the portal's master key and the host's name
  (``derive_host_key``); the portal derives it again to check, the host holds only its own (a
  0600 file, ``HYPERVM_HOST_KEY_FILE``, written by ``manage.py host_key``).
- The signature is HMAC-SHA256 over the task's name, positional and keyword arguments as
  canonical JSON (sorted keys, no spaces): what Celery delivers is what was signed, whatever
  order the JSON carried. It travels as the task's ``signature`` keyword argument.

Pure: no Django, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

SIGNATURE_KWARG = "signature"
_KEY_PURPOSE = b"hypervm host report key\x00"


def derive_host_key(master_key: bytes, host_name: str) -> bytes:
    return hmac.new(master_key, _KEY_PURPOSE + host_name.encode(), hashlib.sha256).digest()


def canonical(task: str, args, kwargs) -> bytes:
    body = {"task": task, "args": list(args or ()), "kwargs": dict(kwargs or {})}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(key: bytes, task: str, args, kwargs) -> str:
    return hmac.new(key, canonical(task, args, kwargs), hashlib.sha256).hexdigest()


def verify(key: bytes, task: str, args, kwargs, signature) -> bool:
    """True only for the signature ``key`` makes of exactly these arguments."""
    if not isinstance(signature, str) or len(signature) != 64:
        return False
    try:
        expected = sign(key, task, args, kwargs)
    except (TypeError, ValueError):  # arguments JSON cannot carry: never signed by a host
        return False
    return hmac.compare_digest(expected, signature)
