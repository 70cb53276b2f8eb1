"""Application errors: one hierarchy, one JSON shape.

Every error the API returns is rendered as
``{"error": {"code": ..., "message": ..., "detail": ...}}`` by
:func:`pefthub_server.core.exceptions.exception_handler`. Services and validators
raise these; views never build error responses by hand.
"""

from __future__ import annotations

from typing import Any


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
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class ValidationFailed(HubError):
    """Bad input (400). Use a specific ``code`` such as ``pickle_refused``."""

    status = 400
    code = "validation_error"


class AuthenticationFailed(HubError):
    status = 401
    code = "authentication_failed"


class PermissionDenied(HubError):
    status = 403
    code = "permission_denied"


class NotFound(HubError):
    status = 404
    code = "not_found"


class Conflict(HubError):
    status = 409
    code = "conflict"


class TooLarge(HubError):
    status = 413
    code = "too_large"
