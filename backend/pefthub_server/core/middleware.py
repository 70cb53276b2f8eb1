"""Middleware that holds for every answer: request ids, the access log and request metrics, HEAD without a body."""

from __future__ import annotations

import logging
import re
import time
import uuid

from django.conf import settings
from django.urls import Resolver404, resolve

from pefthub.protocol import logs
from pefthub_server.core.metrics import request_observed

access_log = logging.getLogger("pefthub.access")

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


class HeadWithoutBodyMiddleware:
    """A response to HEAD has no body (RFC 9110 9.3.2), whatever the view, error handler or static file wrote.

    First in MIDDLEWARE, so it sees every response Django makes. Content-Length stays what a GET
    would send; a streamed body (a file) is dropped unread. Without this, a server that sends what
    the application returns (waitress does) puts the body on the wire, and on a keep-alive
    connection the client reads it as the start of the next response.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method != "HEAD":
            return response
        if response.streaming:
            response.streaming_content = ()  # the file is closed with the response, never read
        else:
            if not response.has_header("Content-Length"):
                response["Content-Length"] = str(len(response.content))
            response.content = b""
        return response


class RequestIdMiddleware:
    """Every response carries ``X-Request-ID``: the client's, or a new one; every log line meanwhile carries it too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SAFE.match(incoming) else uuid.uuid4().hex
        with logs.bound(request_id=request.request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


def route_of(request) -> str:
    """The URL pattern that answers ``request`` (``api/v1/repos/<ns>/<name>``), ``static``, or ``unmatched``.

    Never the path itself: a label made from paths would name private repositories and grow without bound.
    A regex pattern's named groups are written ``<name>``, as a path converter's are.
    """
    return route_label(request.resolver_match) if request.resolver_match else route_of_path(request.path_info)


def route_of_path(path_info: str) -> str:
    """:func:`route_of` for a path no view has answered (a 404, a static file, a body refused before Django)."""
    if path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    try:
        return route_label(resolve(path_info))
    except Resolver404:
        return "unmatched"


def route_label(match) -> str:
    return _NAMED_GROUP.sub(r"<\1>", match.route).replace("^", "").replace("$", "") or "unmatched"


def access_logged(*, method: str, route: str, status: int, seconds: float, size: int | None, client: str) -> None:
    """The access line and the request metrics of one answer."""
    request_observed(method=method, route=route, status=status, seconds=seconds)
    access_log.info("%s %s %s", method, route, status,
                    extra={"method": method, "route": route, "status": status, "client": client,
                           "duration_ms": round(seconds * 1000, 2), "bytes": size})


class AccessMiddleware:
    """One access log line and one metrics observation per request: method, route, status, duration, bytes, client.

    ``client`` is ``REMOTE_ADDR``: the peer, or what a trusted proxy's ``X-Forwarded-For`` says (server.py).

    Right after :class:`RequestIdMiddleware`, so the line carries the request id and the time covers
    every other middleware.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        if request.method == "HEAD":
            size = 0  # HeadWithoutBodyMiddleware, outside this one, drops the body
        else:
            size = len(response.content) if not response.streaming else response.get("Content-Length")
        access_logged(method=request.method, route=route_of(request), status=response.status_code, seconds=seconds,
                      size=int(size) if size not in (None, "") else None, client=request.META.get("REMOTE_ADDR", ""))
        return response
