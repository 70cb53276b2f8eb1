"""API tokens: minted with a secret shown once, stored as a hash, revocable.

Three ways in, one minting step: :func:`token_create` (the API and the server CLI),
:func:`operator_token_create` (the server CLI: a `worker` token marks its user staff) and
:func:`job_token_create` (a claim: the job's own token, living as long as its lease).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from pefthub_server.core.errors import NotFound, PermissionDenied, ValidationFailed
from pefthub_server.core.models import (
    SCOPE_GRANTS,
    USER_SCOPES,
    ApiToken,
    Scope,
    hash_secret,
    may_hold_worker_rights,
    new_secret,
)

#: ten years: long enough for any service account, short enough to stay a date
MAX_TOKEN_DAYS = 3650


def _mint(*, user, name: str, scope: str, expires_at: datetime | None) -> tuple[ApiToken, str]:
    secret = new_secret()
    token = ApiToken.objects.create(
        user=user, name=name[:100] or "default", scope=scope, prefix=secret[:12], secret_hash=hash_secret(secret),
        expires_at=expires_at,
    )
    return token, secret


def token_create(
    *, user, name: str = "default", scope: str = Scope.READ, expires_in_days: int | None = None, creator: ApiToken | None = None
) -> tuple[ApiToken, str]:
    """A new token and its secret (returned once, stored only as a hash)."""
    if scope not in USER_SCOPES:
        why = "is minted only when a worker claims a job" if scope == Scope.JOB else "is invalid"
        raise ValidationFailed(f"Scope {scope!r} {why}; use one of {', '.join(USER_SCOPES)}.", detail={"field": "scope"})
    if creator is not None and creator.is_job_token:
        raise PermissionDenied("A job token cannot create tokens.")
    if creator is not None and not SCOPE_GRANTS[scope] <= SCOPE_GRANTS[creator.scope]:
        raise PermissionDenied(f"A `{creator.scope}` token cannot create a `{scope}` token.")
    if scope == Scope.WORKER and not may_hold_worker_rights(user):
        raise PermissionDenied(
            f"`{user.username}` is not staff: worker tokens claim any job and act for its owner, so only "
            "operators hold them; an operator runs `pefthub-server adduser NAME --scope worker`.")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise ValidationFailed(
            f"expires_in_days must be 1 to {MAX_TOKEN_DAYS} days (or null for no expiry), not {expires_in_days}.",
            detail={"field": "expires_in_days"})
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    return _mint(user=user, name=name, scope=scope, expires_at=expires_at)


def operator_token_create(*, user, name: str, scope: str, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    """A token minted by the server's operator (CLI): a `worker` token makes its user staff first.

    Staff only, not superuser: the account gets worker rights and nothing in /admin.
    """
    if scope == Scope.WORKER and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return token_create(user=user, name=name, scope=scope, expires_in_days=expires_in_days)


def job_token_create(*, user, name: str, expires_at: datetime) -> tuple[ApiToken, str]:
    """The token a claim hands out: scope `job`, expiring with the lease (renewed by heartbeats)."""
    return _mint(user=user, name=name, scope=Scope.JOB, expires_at=expires_at)


def token_revoke(*, user, token_id: int) -> None:
    updated = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if not updated and not ApiToken.objects.filter(pk=token_id, user=user).exists():
        raise NotFound(f"Token {token_id} not found.")


def tokens_revoke_named(*, user, name: str) -> int:
    """Revoke every live token of ``user`` called ``name``; how many were."""
    return ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).update(revoked_at=timezone.now())
