"""API tokens: minted with a secret shown once, stored as a hash, revocable, looked up through a short cache.

Three ways in, one minting step: :func:`token_create` (the API and the server CLI),
:func:`operator_token_create` (the server CLI: a `worker` token marks its user staff) and
:func:`job_token_create` (a claim: the job's own token, living as long as its lease).

:func:`token_by_secret` keeps each valid user token it found, with its user, for
``PEFTHUB_TOKEN_CACHE_SECONDS`` (default 1; 0 turns the cache off), in each server process,
so a client's requests cost no token query. What that delays: a token revoked (or its user
deactivated) in another process stops working within that many seconds; every revocation
made here (:func:`token_revoke`, :func:`tokens_revoke_named`, :func:`tokens_revoke`) and every
user saved here (staff rights taken away, deactivated) empties this process's cache at once,
and expiry is checked on every request. Job tokens are never kept: they die with their job's
lease, checked on every request.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import post_save
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


class _KnownTokens:
    """Valid user tokens this process found lately, by secret hash: the values of the token's row and its user's.

    Each request gets its own objects (rebuilt from the values), never one another thread holds.
    ``generation`` moves with every revocation: a lookup that began before one keeps nothing.
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[float, tuple, tuple]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def get(self, secret_hash: str, lifetime: float) -> ApiToken | None:
        row = self._rows.get(secret_hash)
        if row is None or time.monotonic() - row[0] > lifetime:
            return None
        token = ApiToken.from_db("default", _TOKEN_FIELDS, row[1])
        token.user = get_user_model().from_db("default", _user_fields(), row[2])
        return token

    def keep(self, secret_hash: str, token: ApiToken, generation: int) -> None:
        values = tuple(getattr(token, f) for f in _TOKEN_FIELDS), tuple(getattr(token.user, f) for f in _user_fields())
        with self._lock:
            if generation == self.generation:
                self._rows[secret_hash] = (time.monotonic(), *values)

    def stamp(self, secret_hash: str, last_used_at: datetime) -> None:
        """The kept row's last use, if it is still kept: nothing kept anew (a revocation may have just forgotten it)."""
        with self._lock:
            if (row := self._rows.get(secret_hash)) is not None:
                values = list(row[1])
                values[_TOKEN_FIELDS.index("last_used_at")] = last_used_at
                self._rows[secret_hash] = (row[0], tuple(values), row[2])

    def forget(self) -> None:
        with self._lock:
            self.generation += 1
            self._rows.clear()


_TOKEN_FIELDS = [f.attname for f in ApiToken._meta.concrete_fields]
_known = _KnownTokens()
# A kept token carries its user: a user saved (made staff or not, deactivated) is looked up afresh.
post_save.connect(lambda **_: _known.forget(), sender=settings.AUTH_USER_MODEL, weak=False,
                  dispatch_uid="pefthub-token-cache")


def _user_fields() -> list[str]:
    return [f.attname for f in get_user_model()._meta.concrete_fields]


def token_by_secret(secret: str) -> ApiToken | None:
    """The token whose secret ``secret`` is, with its user (revoked, expired or inactive ones too: the caller
    says why they fail); from this process's cache when it found the token valid lately."""
    secret_hash, lifetime = hash_secret(secret), settings.PEFTHUB_TOKEN_CACHE_SECONDS
    token = _known.get(secret_hash, lifetime) if lifetime > 0 else None
    if token is not None and not token.expired:
        return token
    generation = _known.generation
    token = ApiToken.objects.select_related("user").filter(secret_hash=secret_hash).first()
    if (lifetime > 0 and token is not None and not token.is_job_token and token.user.is_active
            and not token.revoked and not token.expired):
        _known.keep(secret_hash, token, generation)
    return token


def token_used(token: ApiToken, when: datetime) -> None:
    """Stamp the token's last use (the caller writes at most once a minute); the cache keeps the new stamp."""
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=when)
    token.last_used_at = when
    _known.stamp(token.secret_hash, when)


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


def tokens_revoke(tokens: QuerySet[ApiToken]) -> int:
    """Revoke the live tokens among ``tokens``, at once in this process; how many were."""
    revoked = tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    _known.forget()
    transaction.on_commit(_known.forget)  # inside a transaction, a lookup meanwhile still saw the token live
    return revoked


def token_revoke(*, user, token_id: int) -> None:
    if not tokens_revoke(ApiToken.objects.filter(pk=token_id, user=user)) \
            and not ApiToken.objects.filter(pk=token_id, user=user).exists():
        raise NotFound(f"Token {token_id} not found.")


def tokens_revoke_named(*, user, name: str) -> int:
    """Revoke every live token of ``user`` called ``name``; how many were."""
    return tokens_revoke(ApiToken.objects.filter(user=user, name=name))
