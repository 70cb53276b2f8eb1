"""Bearer-token authentication and the scope check every write goes through."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication

from pefthub_server.core.errors import AuthenticationFailed, PermissionDenied
from pefthub_server.core.models import ApiToken, hash_secret
from pefthub_server.core.throttling import failure_recorded

_LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <token>``. A token that is sent must be valid: 401 otherwise."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise _failed(request, None, "Malformed Authorization header; send `Authorization: Bearer <token>`.")
        secret = parts[1]
        token = (
            ApiToken.objects.select_related("user")
            .filter(secret_hash=hash_secret(secret))
            .first()
        )
        if token is None or not token.user.is_active:
            raise _failed(request, secret, "Invalid token. Create one with `pefthub-server adduser` or POST /api/v1/tokens.")
        if token.revoked:
            raise _failed(request, secret, f"Token `{token.name}` ({token.prefix}…) was revoked.")
        if token.expired:
            raise _failed(request, secret,
                          f"Token `{token.name}` ({token.prefix}…) expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
            # One write a minute at most, not one per request.
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="pefthub"'


def _failed(request, secret: str | None, message: str) -> Exception:
    """A failed authentication, counted: 401 with ``message``, or 429 once its address or token prefix failed too often."""
    return failure_recorded(request, secret) or AuthenticationFailed(message)


def require_scope(request, permission: str, action: str) -> None:
    """Raise 401/403 unless the request is signed in with a token granting ``permission``."""
    if not request.user.is_authenticated:
        raise AuthenticationFailed(f"Sign in to {action}: send `Authorization: Bearer <token>`.")
    token = request.auth
    if isinstance(token, ApiToken) and not token.grants(permission):
        raise PermissionDenied(
            f"This token has scope `{token.scope}`, which does not allow you to {action}; "
            f"use a token with scope `{permission}` or above."
        )


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "pefthub_server.core.auth.TokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}
