"""API token authentication. Accepts ``Authorization: Token <key>`` (DRF style) and
``Authorization: token=<key>`` (what Marathon clients send)."""

import hashlib

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.models import ApiToken


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_from_header(header: str) -> str | None:
    header = header.strip()
    if header[:6].lower() == "token ":
        return header[6:].strip() or None
    if header[:6].lower() == "token=":
        return header[6:].strip() or None
    return None


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        key = _key_from_header(header)
        if key is None:
            return None
        token = ApiToken.objects.active().select_related("user", "tenant").filter(key_sha256=token_digest(key)).first()
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword
