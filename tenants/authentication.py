"""API token authentication. Accepts ``Authorization: Token <key>`` (DRF style) and
``Authorization: token=<key>`` (what Marathon clients send)."""

import hashlib
from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.models import ApiToken

# A token's last use is written at most this often: a client polling several times a second
# would otherwise make every read request a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_from_header(header: str) -> str | None:
    header = header.strip()
    if header[:6].lower() == "token ":
        return header[6:].strip() or None
    if header[:6].lower() == "token=":
        return header[6:].strip() or None
    return None


def token_from_header(header: str) -> ApiToken | None:
    """The active token of an active user that an Authorization header names, else None (the
    header names no token, or a revoked or unknown one). Marks it used (to the minute)."""
    key = _key_from_header(header)
    if key is None:
        return None
    token = ApiToken.objects.active().select_related("user", "tenant").filter(key_sha256=token_digest(key)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header or _key_from_header(header) is None:
            return None
        token = token_from_header(header)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword
