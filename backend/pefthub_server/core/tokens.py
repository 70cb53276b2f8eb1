"""API tokens: minted with a secret shown once, stored as a hash, revocable."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from pefthub_server.core.errors import NotFound, PermissionDenied, ValidationFailed
from pefthub_server.core.models import SCOPE_GRANTS, ApiToken, Scope, hash_secret, new_secret


def token_create(
    *, user, name: str = "default", scope: str = Scope.READ, expires_in_days: int | None = None, creator: ApiToken | None = None
) -> tuple[ApiToken, str]:
    """A new token and its secret (returned once, stored only as a hash)."""
    if scope not in Scope.values:
        raise ValidationFailed(f"Scope {scope!r} is invalid; use one of {', '.join(Scope.values)}.")
    if creator is not None and not SCOPE_GRANTS[scope] <= SCOPE_GRANTS[creator.scope]:
        raise PermissionDenied(f"A `{creator.scope}` token cannot create a `{scope}` token.")
    if expires_in_days is not None and expires_in_days <= 0:
        raise ValidationFailed("expires_in_days must be a positive number of days (or null for no expiry).")
    secret = new_secret()
    token = ApiToken.objects.create(
        user=user,
        name=name[:100] or "default",
        scope=scope,
        prefix=secret[:12],
        secret_hash=hash_secret(secret),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, secret


def token_revoke(*, user, token_id: int) -> None:
    updated = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if not updated and not ApiToken.objects.filter(pk=token_id, user=user).exists():
        raise NotFound(f"Token {token_id} not found.")
