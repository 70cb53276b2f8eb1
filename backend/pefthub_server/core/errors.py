"""Errors: one hierarchy of application errors, and the one JSON shape every error is rendered in.

Every error the API returns is ``{"error": {"code": ..., "message": ..., "detail": ...}}``:
ours (:class:`HubError` and its kinds), the shared contract's
(:class:`~pefthub.protocol.errors.ProtocolError`, a 400 with its own code), DRF's and
Django's (:func:`exception_handler`), unknown URLs under ``/api/`` (:func:`json_404`),
requests Django refuses before any view (:func:`bad_request`: a bad Host header, a body
over ``DATA_UPLOAD_MAX_MEMORY_SIZE``) and crashes (:func:`server_error`). Services and
validators raise; views never build error responses by hand. Web pages keep Django's
HTML error pages.
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf

from pefthub.protocol.errors import ProtocolError


class HubError(Exception):
    """Base class: an HTTP status, a stable machine code and a human message."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, detail: Any = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.detail = detail

    def as_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.detail)


class ValidationFailed(HubError):
    """Bad input (400). Use a specific ``code`` such as ``pickle_refused``."""

    status = 400
    code = "validation_error"


def from_protocol(exc: ProtocolError) -> ValidationFailed:
    """A broken rule of the shared contract, as a 400 with the rule's code, message and detail."""
    return ValidationFailed(exc.message, code=exc.code, detail=exc.detail)


class AuthenticationFailed(HubError):
    status, code = 401, "authentication_failed"


class PermissionDenied(HubError):
    status, code = 403, "permission_denied"


class NotFound(HubError):
    status, code = 404, "not_found"


class Conflict(HubError):
    status, code = 409, "conflict"


class TooLarge(HubError):
    status, code = 413, "too_large"


# --- rendering ----------------------------------------------------------------------------

_DRF_CODES = {
    drf.ValidationError: "validation_error",
    drf.ParseError: "invalid_json",
    drf.NotAuthenticated: "authentication_failed",
    drf.AuthenticationFailed: "authentication_failed",
    drf.PermissionDenied: "permission_denied",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.Throttled: "throttled",
}


def _message_from_detail(detail) -> str:
    if isinstance(detail, dict):
        parts = []
        for field, errors in detail.items():
            errs = errors if isinstance(errors, list) else [errors]
            parts.append(f"{field}: {' '.join(str(e) for e in errs)}")
        return "Invalid request. " + "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(str(d) for d in detail)
    return str(detail)


def error_body(code: str, message: str, detail: Any = None) -> dict:
    return {"error": {"code": code, "message": message, "detail": detail}}


def exception_handler(exc, context):
    headers = {}
    if isinstance(exc, ProtocolError):
        exc = from_protocol(exc)
    if isinstance(exc, HubError):
        status, body = exc.status, exc.as_dict()
    elif isinstance(exc, Http404):
        status, body = 404, error_body("not_found", "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        status, body = 403, error_body("permission_denied", "You do not have permission to do this.")
    elif isinstance(exc, drf.APIException):
        status = exc.status_code
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        detail = exc.detail if isinstance(exc, drf.ValidationError) else None
        message = _message_from_detail(exc.detail)
        if isinstance(exc, drf.MethodNotAllowed) and context.get("view") is not None:
            allowed = [m for m in context["view"].allowed_methods if m != "OPTIONS"]
            message = f"{context['request'].method} is not allowed on {context['request'].path}; use {', '.join(allowed)}."
        body = error_body(code, message, detail)
        if isinstance(exc, drf.Throttled) and exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
    elif isinstance(exc, (OperationalError, InterfaceError)):
        status, body = 503, _database_unavailable()
        headers["Retry-After"] = str(_DATABASE_RETRY_AFTER)
    else:
        return None  # a bug: Django's 500 handler answers and logs it
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pefthub"'
    # JSON whatever the view renders otherwise (the schema view answers YAML)
    return JsonResponse(body, status=status, headers=headers)


def _is_api(request) -> bool:
    """The token-authenticated APIs, whose errors are JSON: ``/api/`` and the Hugging Face-compatible ``/hf/``."""
    return request.path.startswith(("/api/", "/hf/"))


@csrf_exempt  # no view here to protect: a POST gets the same 404 as a GET, never a CSRF page
def json_404(request, exception=None):
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)


def bad_request(request, exception):
    """A request Django refused before any view ran; a body over the limit is a 413."""
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return JsonResponse(error_body("too_large", f"The request body is larger than {limit} bytes "
                                       "(PEFTHUB_MAX_REQUEST_BODY); file bytes go to the upload URLs a push "
                                       "negotiates, not into an API request.", {"limit": limit}), status=413)
    return JsonResponse(error_body("bad_request", f"Bad request: {exception}"), status=400)


_DATABASE_RETRY_AFTER = 5


def _database_unavailable() -> dict:
    return error_body("database_unavailable", "The hub cannot reach its database right now (restarting or down); "
                      f"retry in {_DATABASE_RETRY_AFTER} seconds.")


def server_error(request):
    # Django calls this inside its except block: a lost database connection is a 503 that says so.
    exc = sys.exc_info()[1]
    if isinstance(exc, (OperationalError, InterfaceError)):
        response = (JsonResponse(_database_unavailable(), status=503) if _is_api(request)
                    else HttpResponse("The hub cannot reach its database right now; retry in a few seconds.",
                                      status=503, content_type="text/plain"))
        response["Retry-After"] = str(_DATABASE_RETRY_AFTER)
        return response
    if _is_api(request):
        return JsonResponse(
            error_body("server_error", "Internal server error; the request id is in X-Request-ID."), status=500
        )
    return defaults.server_error(request)
