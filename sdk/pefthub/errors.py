"""Typed exceptions, mapped from the server's ``{"error": {...}}`` body.

Every error the SDK raises is a :class:`HubError`; catch a subclass for one case
(``NotFound``, ``Conflict`` ...) or the base for all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .protocol import errors as protocol

if TYPE_CHECKING:
    from .jobs import Job


class HubError(Exception):
    """Base class: a message plus what the server said (status, code, detail)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id

    def __str__(self) -> str:
        head = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        text = f"{head}: {self.message}" if head else self.message
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"


class BadRequest(HubError):
    """400: the request was refused as invalid."""


class ValidationError(BadRequest):
    """400 from the server, or input the SDK refuses before sending anything."""


class RefError(ValidationError, protocol.RefError):
    """A reference string is not ``namespace/name[@revision]``; raised locally."""


@contextlib.contextmanager
def translated(error: type[HubError] = ValidationError) -> Iterator[None]:
    """Raise what breaks the shared contract (:mod:`pefthub.protocol`) as an SDK error, before any request.

    A reference error becomes :class:`RefError`; any other becomes ``error`` with code
    ``validation_error`` and the protocol's message and detail (``{"field": ...}``).
    """
    try:
        yield
    except protocol.RefError as exc:
        raise RefError(exc.message, detail=exc.detail) from None
    except protocol.ProtocolError as exc:
        raise error(exc.message, code="validation_error", detail=exc.detail) from None


class AuthenticationFailed(HubError):
    """401: missing, unknown, revoked or expired token."""


class PermissionDenied(HubError):
    """403: you can see the object but may not do this."""


class NotFound(HubError):
    """404: no such object, or one you may not see."""


class Conflict(HubError):
    """409: the object already exists."""


class RateLimited(HubError):
    """429: still throttled after every retry."""


class ServerError(HubError):
    """5xx: the server failed, after every retry."""


class HubConnectionError(HubError):
    """The server could not be reached (DNS, refused, reset, timeout)."""


class IntegrityError(HubError):
    """Downloaded bytes do not match the sha256 or size the manifest promised."""


class JobFailed(HubError):
    """The job ended ``failed``: ``code`` and ``message`` are the worker's, ``job`` the final state."""

    def __init__(self, job: Job, code: str | None, message: str) -> None:
        super().__init__(message, code=code)
        self.job = job

    def __str__(self) -> str:
        code = f" ({self.code})" if self.code else ""
        return f"job {self.job.id} failed{code}: {self.message}"


class JobCancelled(HubError):
    """The job ended ``cancelled`` before it produced a result."""

    def __init__(self, job: Job, message: str | None = None) -> None:
        super().__init__(message or f"job {job.id} was cancelled", code="cancelled")
        self.job = job

    def __str__(self) -> str:
        return self.message


_BY_STATUS: dict[int, type[HubError]] = {
    400: ValidationError,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


def error_class_for(status: int) -> type[HubError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return HubError


def error_from_response(response: Any) -> HubError:
    """Build the typed error for a ``requests.Response`` with a 4xx/5xx status."""
    status = response.status_code
    request_id = response.headers.get("X-Request-ID")
    code = None
    detail = None
    message = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code")
        message = err.get("message")
        detail = err.get("detail")
    if not message:
        # Not our shape (a proxy's HTML page, S3's XML): keep a readable excerpt.
        text = (getattr(response, "text", "") or "").strip()
        reason = getattr(response, "reason", "") or "HTTP error"
        message = f"{reason}: {text[:500]}" if text else str(reason)
        if body is not None and detail is None:
            detail = body
    return error_class_for(status)(
        message, status=status, code=code, detail=detail, request_id=request_id
    )
