"""Failed authentication: API tokens rate-limited per client address and token prefix; admin sign-in locked out.

Built on DRF's throttling: each limit is a ``SimpleRateThrottle`` with its rate in
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (``PEFTHUB_AUTH_FAIL_RATE``,
``PEFTHUB_AUTH_FAIL_PREFIX_RATE``) and its history in Django's cache: per process by
default, shared by every server process with ``PEFTHUB_CACHE_URL=redis://…``. Unlike a
view throttle it records only failures (a bad, revoked or expired token, a malformed
header), and it refuses only failing attempts: once over the rate they get 429 instead
of 401. A valid token keeps working from a throttled address, and anonymous requests
are not attempts. A secret is 256 random bits, so the limit is not what keeps it from
being guessed; it makes a client with a wrong token back off and keeps scanners from
costing a lookup each, while refusing valid tokens would let anyone behind the same
address, or anyone who has seen a token's prefix, lock its owners out.

Admin sign-in (passwords, which people choose) is django-axes' work, configured in
settings (``AXES_*``); this module gives it the client address and the lockout page.
"""

from __future__ import annotations

from axes.helpers import get_client_username, get_cool_off
from django.shortcuts import render
from rest_framework.exceptions import Throttled
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from pefthub_server.core.models import PREFIX_LENGTH, TOKEN_PREFIX

ADDRESS_SCOPE = "auth_failures_per_address"
PREFIX_SCOPE = "auth_failures_per_prefix"
_ADVICE = "check the token (PEFTHUB_TOKEN, or HF_TOKEN under /hf, must be a current PEFT Hub token)"


def client_address(request) -> str:
    """The client's address: ``REMOTE_ADDR``, which the server sets from a trusted proxy's headers when one is
    configured (PEFTHUB_TRUSTED_PROXY). Never ``X-Forwarded-For`` itself: any client can write that."""
    return request.META.get("REMOTE_ADDR", "")


class FailureThrottle(SimpleRateThrottle):
    """Failed authentications of one client address or one token prefix (``ident``) under ``scope``'s rate."""

    def __init__(self, scope: str, ident: str) -> None:
        self.scope, self.ident = scope, ident
        super().__init__()

    def get_rate(self) -> str | None:
        # Read per request (DRF reads the rates once, at import), so a changed setting applies.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.ident}


def failure_recorded(request, secret: str | None) -> Throttled | None:
    """Count a failed authentication with ``secret`` (None: no token could be read from the header).

    Returns the 429 to answer instead of the 401 when the client's address, or the token
    prefix the secret claims, has failed more often than its rate allows; a refused
    attempt is not counted again.
    """
    throttles = [(FailureThrottle(ADDRESS_SCOPE, client_address(request)), f"from {client_address(request)}")]
    if secret is not None and secret.startswith(TOKEN_PREFIX):
        prefix = secret[:PREFIX_LENGTH]
        throttles.append((FailureThrottle(PREFIX_SCOPE, prefix), f"with tokens starting `{prefix}`"))
    for throttle, who in throttles:
        if not throttle.allow_request(request, None):
            return Throttled(
                wait=throttle.wait(),
                detail=f"Too many failed authentications {who} (more than {throttle.num_requests} in "
                       f"{throttle.duration} s); {_ADVICE}, and retry later.",
            )
    return None


def admin_lockout(request, original_response=None, credentials=None):
    """django-axes' answer to a locked-out sign-in: 429, how long it lasts, and how an operator unlocks it."""
    seconds = int(get_cool_off(request).total_seconds())
    wait = f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
    template = "web/account/locked.html" if request.path.startswith("/account/") else "core/admin_lockout.html"
    response = render(request, template,
                      {"username": get_client_username(request, credentials), "wait": wait}, status=429)
    response["Retry-After"] = str(seconds)
    return response
