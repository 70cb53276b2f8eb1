"""Bearer-token authentication, the scope check every write goes through, the job-token policy, and
web sessions signed in with a token (they hold that token's scope, and end when it does)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import SESSION_KEY, login, logout
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from pefthub.protocol.jobs import ACTIVE
from pefthub_server.core.errors import AuthenticationFailed, PermissionDenied
from pefthub_server.core.models import ApiToken, Scope
from pefthub_server.core.throttling import failure_recorded
from pefthub_server.core.tokens import token_by_secret, token_used

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
        token = token_check(request, parts[1])
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="pefthub"'


def token_check(request, secret: str) -> ApiToken:
    """The valid token whose secret ``secret`` is, its use recorded; raises 401 (429 when failing too often) saying why not."""
    token = token_by_secret(secret)
    if token is None or not token.user.is_active:
        raise _failed(request, secret, "Invalid token. Create one with `pefthub-server adduser` or POST /api/v1/tokens.")
    if token.revoked:
        raise _failed(request, secret, f"Token `{token.name}` ({token.prefix}…) was revoked.")
    if token.expired:
        raise _failed(request, secret,
                      f"Token `{token.name}` ({token.prefix}…) expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    _record_use(token)
    return token


def _record_use(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        # One write a minute at most, not one per request.
        token_used(token, now)


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


# --- web sessions signed in with a token ------------------------------------------------------
#
# A page request's rights are those of its session: a password session holds the user's full
# rights (``request.auth`` is None, as for no cap at all: the same as an `admin` token); a token
# session holds its token's scope, checked by the same ``require_scope`` the API uses, since
# SessionTokenMiddleware sets ``request.auth`` to the token. The session stores the token's id,
# never its secret.

SESSION_TOKEN_KEY = "pefthub_token_id"
_SESSION_BACKEND = "django.contrib.auth.backends.ModelBackend"

SIGN_IN_REFUSED = {
    Scope.JOB: "A job token belongs to one running job (it reads the job's inputs and pushes its result) and "
               "cannot sign in; sign in with your password or a read, write or admin token.",
    Scope.WORKER: "A worker token only claims jobs for a worker and reads nothing itself, so it cannot sign in; "
                  "sign in with your password or a read, write or admin token.",
}


def token_session_start(request, secret: str) -> ApiToken:
    """Sign the web session in with an API token: 401/429 for a bad one, 403 for a job or worker token."""
    token = token_check(request, secret.strip())
    if token.scope in SIGN_IN_REFUSED:
        raise PermissionDenied(SIGN_IN_REFUSED[token.scope], code="token_cannot_sign_in")
    login(request, token.user, backend=_SESSION_BACKEND)
    request.session[SESSION_TOKEN_KEY] = token.pk
    return token


def session_token(request) -> ApiToken | None:
    """The token the session signed in with, if it still holds (else the session is signed out here)."""
    token_id = request.session.get(SESSION_TOKEN_KEY)
    if token_id is None:
        return None
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if token is None or token.revoked or token.expired or not token.user.is_active \
            or str(token.user_id) != str(request.session.get(SESSION_KEY)):
        why = "was revoked" if token is not None and token.revoked else "is no longer valid"
        logout(request)
        messages.warning(request, f"You were signed out: the token this session signed in with {why}.", fail_silently=True)
        return None
    _record_use(token)
    return token


class SessionTokenMiddleware:
    """Sets ``request.auth`` for pages: the session's token (re-checked on every request), or None.

    After AuthenticationMiddleware and MessageMiddleware.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.auth = session_token(request)
        return self.get_response(request)


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "pefthub_server.core.auth.TokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}
