"""Render every error, ours and DRF's and Django's, as ``{"error": {code, message, detail}}``."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from pefthub_server.core.errors import HubError

log = logging.getLogger(__name__)

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


def error_body(status: int, code: str, message: str, detail=None) -> dict:
    return {"error": {"code": code, "message": message, "detail": detail}}


def exception_handler(exc, context):
    headers = {}
    if isinstance(exc, HubError):
        status, body = exc.status, exc.as_dict()
    elif isinstance(exc, Http404):
        status, body = 404, error_body(404, "not_found", "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        status, body = 403, error_body(403, "permission_denied", "You do not have permission to do this.")
    elif isinstance(exc, drf.APIException):
        status = exc.status_code
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        detail = exc.detail if isinstance(exc, drf.ValidationError) else None
        body = error_body(status, code, _message_from_detail(exc.detail), detail)
        if isinstance(exc, drf.Throttled) and exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
    else:
        return None  # a bug: Django's 500 handler answers and logs it
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pefthub"'
    return Response(body, status=status, headers=headers)


def json_404(request, exception=None):
    return JsonResponse(error_body(404, "not_found", f"No API endpoint at {request.path}."), status=404)


def server_error(request):
    """JSON under /api/ and /hf/, Django's page elsewhere."""
    if request.path.startswith(("/api/", "/hf/")):
        return JsonResponse(
            error_body(500, "server_error", "Internal server error; the request id is in X-Request-ID."), status=500
        )
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)
