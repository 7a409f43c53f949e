"""Encryption of registry passwords at rest (Fernet/MultiFernet).

Keys come from ``PORTAL_FERNET_KEYS`` (comma-separated) or the key file
``PORTAL_FERNET_KEYS_FILE`` (one key a line, created 0600 on first use in dev/test).
The first key encrypts; every key decrypts, so a key is rotated by prepending a new one.
Never derived from SECRET_KEY, never in the repository.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from portal.secrets import read_or_create_secret


class SecretUnreadable(Exception):
    """The ciphertext does not decrypt with any configured key."""


@cache
def _fernet() -> MultiFernet:
    keys = list(settings.FERNET_KEYS)
    if not keys:
        text = read_or_create_secret(settings.FERNET_KEYS_FILE, make=lambda: Fernet.generate_key().decode())
        keys = [line.strip() for line in text.splitlines() if line.strip()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


def secret_encrypt(plaintext: str) -> bytes:
    return _fernet().encrypt(plaintext.encode())


def secret_decrypt(ciphertext: bytes) -> str:
    try:
        return _fernet().decrypt(bytes(ciphertext)).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("stored secret does not decrypt with the configured keys") from exc
