"""A compute host's own key: what the host sends the portal is signed with it, so that one host
(or anything else that can write to the broker) cannot speak for another: report on another
host's instances, register a host the platform did not provision, or drop another host's
volumes; and what the portal sends one host in confidence (a pull's registry credentials) is
sealed with it, so that no other host reading the broker can open it.

- A host's key is derived from the portal's master key and the host's name
  (``derive_host_key``); the portal derives it again to check, the host holds only its own (a
  0600 file, ``HYPERVM_HOST_KEY_FILE``, written by ``manage.py host_key``).
- The signature is HMAC-SHA256 over the task's name, positional and keyword arguments as
  canonical JSON (sorted keys, no spaces): what Celery delivers is what was signed, whatever
  order the JSON carried. It travels as the task's ``signature`` keyword argument.
- A sealed value is Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the host's key
  for that purpose only (``seal``/``unseal``).

Pure: no Django, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.fernet import Fernet, InvalidToken

SIGNATURE_KWARG = "signature"
_KEY_PURPOSE = b"hypervm host report key\x00"
_SEAL_PURPOSE = b"hypervm sealed for the host\x00"


class SealBroken(ValueError):
    """Not sealed with this host's key, or changed since."""


def derive_host_key(master_key: bytes, host_name: str) -> bytes:
    return hmac.new(master_key, _KEY_PURPOSE + host_name.encode(), hashlib.sha256).digest()


def canonical(task: str, args, kwargs) -> bytes:
    body = {"task": task, "args": list(args or ()), "kwargs": dict(kwargs or {})}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(key: bytes, task: str, args, kwargs) -> str:
    return hmac.new(key, canonical(task, args, kwargs), hashlib.sha256).hexdigest()


def verify(key: bytes, task: str, args, kwargs, signature) -> bool:
    """True only for the signature ``key`` makes of exactly these arguments."""
    if not isinstance(signature, str) or len(signature) != 64 or not signature.isascii():
        return False
    try:
        expected = sign(key, task, args, kwargs)
    except (TypeError, ValueError):  # arguments JSON cannot carry: never signed by a host
        return False
    return hmac.compare_digest(expected, signature)


def _sealing(host_key: bytes) -> Fernet:
    derived = hmac.new(host_key, _SEAL_PURPOSE, hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(host_key: bytes, value: dict) -> str:
    return _sealing(host_key).encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def unseal(host_key: bytes, token) -> dict:
    """The value ``seal`` sealed with this key; SealBroken for anything else."""
    try:
        value = json.loads(_sealing(host_key).decrypt(str(token).encode()))
    except (InvalidToken, ValueError, TypeError) as exc:
        raise SealBroken("not sealed for this host") from exc
    if not isinstance(value, dict):
        raise SealBroken("not a sealed object")
    return value
