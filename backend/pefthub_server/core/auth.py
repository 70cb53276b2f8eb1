"""Bearer-token authentication, the scope check every write goes through, and the job-token policy."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from pefthub.protocol.jobs import ACTIVE
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


JOB_TOKEN_REFUSED = ("A job token may only read the job's pinned inputs, push its result and report on its own job; "
                     "use a user token for anything else.")


def job_token(request) -> ApiToken | None:
    """The job token the request is signed with, if it is one."""
    token = getattr(request, "auth", None)
    return token if isinstance(token, ApiToken) and token.is_job_token else None


def require_scope(request, permission: str, action: str) -> None:
    """Raise 401/403 unless the request is signed in with a token granting ``permission``.

    A job token grants nothing by scope: it passes only where JobTokenPolicy admitted this
    very request (the view's rule allowed it).
    """
    if not request.user.is_authenticated:
        raise AuthenticationFailed(f"Sign in to {action}: send `Authorization: Bearer <token>`.")
    token = request.auth
    if job_token(request) is not None:
        if not getattr(request, "job_token_admitted", False):
            raise PermissionDenied(JOB_TOKEN_REFUSED, code="job_token_refused")
        return
    if isinstance(token, ApiToken) and not token.grants(permission):
        raise PermissionDenied(
            f"This token has scope `{token.scope}`, which does not allow you to {action}; "
            f"use a token with scope `{permission}` or above."
        )


class JobTokenPolicy(BasePermission):
    """The one rule for job tokens (every API view): a view allows a job token only if it says so.

    A view opts in with ``job_token_rule(request, job, **url_kwargs) -> bool``, written next to
    the view. Without a rule, or when the rule says no or the job is no longer running, a job
    token gets 403. Every other caller passes through to the view's own checks.
    """

    def has_permission(self, request, view) -> bool:
        token = job_token(request)
        if token is None:
            return True
        job = getattr(token, "job", None)  # jobs.Job.token's reverse side: core does not import jobs
        rule = getattr(view, "job_token_rule", None)
        if job is None or job.status not in ACTIVE or rule is None or not rule(request, job, **view.kwargs):
            raise PermissionDenied(JOB_TOKEN_REFUSED, code="job_token_refused")
        request.job_token_admitted = True
        return True


def require_job_token(request, action: str) -> None:
    """Raise unless the request is signed with a job token (JobTokenPolicy matched it to the URL's job)."""
    if not request.user.is_authenticated:
        raise AuthenticationFailed(f"Sign in to {action}: send the job token the claim returned.")
    if job_token(request) is None:
        raise PermissionDenied(f"Only the job's own token (returned by its claim) may {action}.")


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "pefthub_server.core.auth.TokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}
