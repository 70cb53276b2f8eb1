"""API tokens: stored as a sha256 of the secret, shown once at creation."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from pefthub.protocol.repos import SCOPES

TOKEN_PREFIX = "phub_"
PREFIX_LENGTH = 12  # characters of a secret kept (ApiToken.prefix) and shown to recognise it


def choices(name: str, values: tuple[str, ...], *, labels: bool = True) -> type[models.TextChoices]:
    """Django choices for a tuple of the shared contract's values: ``"adapter"`` becomes ``Kind.ADAPTER``.

    Labels are Django's (``"Adapter"``), or with ``labels=False`` the values themselves.
    """
    return models.TextChoices(name, [(value.upper(), value if labels else (value, value)) for value in values])


Scope = choices("Scope", SCOPES, labels=False)


# What each scope allows; a token may only mint tokens whose scope it covers.
# `worker` claims jobs and nothing else (the claim hands out the job's own token for the
# rest); `worker` rights need a staff user (see ApiToken.grants). A `job` token grants
# nothing by scope: core.auth.JobTokenPolicy allows exactly its job's calls.
SCOPE_GRANTS: dict[str, frozenset[str]] = {
    Scope.READ: frozenset({"read"}),
    Scope.WRITE: frozenset({"read", "write"}),
    Scope.WORKER: frozenset({"worker"}),
    Scope.ADMIN: frozenset({"read", "write", "worker", "admin"}),
    Scope.JOB: frozenset(),
}


#: what a user may ask for; a `job` token is minted only by a claim
USER_SCOPES = tuple(scope for scope in Scope.values if scope != Scope.JOB)


def may_hold_worker_rights(user) -> bool:
    """Claiming hands out tokens acting for any job's owner: an operator's right, so staff only."""
    return user.is_staff


def hash_secret(secret: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough (as GitHub does);
    # a slow KDF would only cost latency on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.READ)
    prefix = models.CharField(max_length=16, help_text="First characters of the secret, to recognise it")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user.username}:{self.name} ({self.scope}, {self.prefix}…)"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_job_token(self) -> bool:
        return self.scope == Scope.JOB

    def grants(self, permission: str) -> bool:
        if permission == "worker" and not may_hold_worker_rights(self.user):
            return False  # a user who stopped being staff keeps no worker rights
        return permission in SCOPE_GRANTS[self.scope]
