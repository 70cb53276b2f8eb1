"""Middleware that holds for every answer: request ids, and HEAD answered without a body."""

from __future__ import annotations

import re
import uuid

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
    """Every response carries ``X-Request-ID``: the client's, or a new one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SAFE.match(incoming) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response
