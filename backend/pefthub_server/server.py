"""The HTTP server `pefthub-server up` runs: waitress, with three rules kept at the socket.

- A request body is bounded before it is read. waitress spools a body to disk before the
  application sees it, so the bound is chosen from the request line and headers alone:
  ``PEFTHUB_MAX_REQUEST_BODY`` for everything, ``PEFTHUB_MAX_FILE_SIZE`` for a PUT of a blob
  to the URL the upload negotiation signed (the signature is checked first). A larger
  Content-Length (or a chunked body growing past it) gets a 413 in the JSON error shape,
  and ``Expect: 100-continue`` clients are told before they send a byte.
- A response to HEAD carries no body on the wire, not even a chunked terminator (waitress
  sends whatever the application returns; the hub's middleware empties it too).
- Proxy headers (``X-Forwarded-Proto``, ``-For``, ``-Host``) are honoured only from
  ``PEFTHUB_TRUSTED_PROXY``, and cleared from everyone else.
"""

from __future__ import annotations

import copy
import json
import re
from urllib.parse import parse_qs

from django.conf import settings
from django.core.management.base import CommandError
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import RequestEntityTooLarge

from pefthub_server.core.errors import error_body
from pefthub_server.registry.storage import get_blob_store

_BLOB = re.compile(r"^/api/v1/blobs/(?P<sha256>[0-9a-f]{64})$")


def body_limit(method: str, path: str, query: str) -> tuple[int, str]:
    """The most bytes this request's body may carry, and the setting that says so."""
    blob = _BLOB.match(path) if method == "PUT" else None
    if blob is not None:
        store = get_blob_store()
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        if store.serves_bytes and store.check_signature(blob["sha256"], "PUT", params.get("expires"), params.get("sig"),
                                                        params.get("user", "")):
            return settings.PEFTHUB_MAX_FILE_SIZE, "PEFTHUB_MAX_FILE_SIZE"
    return settings.PEFTHUB_MAX_REQUEST_BODY, "PEFTHUB_MAX_REQUEST_BODY"


class BodyTooLarge(RequestEntityTooLarge):
    """waitress's 413, in the hub's JSON error shape."""

    def __init__(self, limit: int, setting: str, length: int | None):
        size = f"of {length} bytes" if length else f"of more than {limit} bytes"
        fix = ("file bytes go to the upload URLs a push negotiates (POST /api/v1/repos/<ns>/<name>/uploads)"
               if setting == "PEFTHUB_MAX_REQUEST_BODY" else "the hub's operator sets the limit")
        super().__init__(f"A request body {size} exceeds this route's limit of {limit} bytes ({setting}); {fix}.")
        self.limit = limit

    def to_response(self, ident=None):
        body = json.dumps(error_body("too_large", self.body, {"limit": self.limit})).encode()
        return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body


class BoundedRequest(HTTPRequestParser):
    """waitress's request parser, with this request's body limit set from its headers before the body is read."""

    limit = setting = None

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        self.limit, self.setting = body_limit(self.command, self.path, self.query)
        self.adj = copy.copy(self.adj)  # this request's adjustments; the server's stay as they are
        self.adj.max_request_body_size = self.limit + 1  # waitress refuses max_request_body_size bytes and more

    def received(self, data):
        consumed = super().received(data)
        if type(self.error) is RequestEntityTooLarge:
            self.error = BodyTooLarge(self.limit, self.setting, None if self.chunked else self.content_length)
            self.expect_continue = False  # no "100 Continue": the client keeps its body
        return consumed


class _HeadWithoutBody:
    """Task mixin: for HEAD, write the status line and headers and nothing else."""

    def write(self, data):
        super().write(b"" if self.request.command == "HEAD" else data)

    def finish(self):
        if self.request.command == "HEAD":
            self.chunked_response = False  # no terminating chunk either
        super().finish()


class _WSGITask(_HeadWithoutBody, WSGITask):
    def get_environment(self):
        environ = super().get_environment()
        if self.request.command == "HEAD":
            environ.pop("wsgi.file_wrapper", None)  # a wrapped file is sent past write(); HEAD must not send it
        return environ


class _ErrorTask(_HeadWithoutBody, ErrorTask):
    pass


class HubChannel(HTTPChannel):
    parser_class = BoundedRequest
    task_class = _WSGITask
    error_task_class = _ErrorTask


def waitress_options(*, host: str, port: int, threads: int) -> dict:
    """The keyword arguments for waitress: listen address, threads, limits and proxy trust from settings."""
    options = {
        "host": host, "port": port, "threads": threads, "ident": "pefthub", "channel_timeout": 300,
        # The largest body any request may send; each request gets its own, smaller, bound (BoundedRequest).
        "max_request_body_size": max(settings.PEFTHUB_MAX_FILE_SIZE, settings.PEFTHUB_MAX_REQUEST_BODY) + 1,
    }
    if settings.PEFTHUB_TRUSTED_PROXY:
        options["trusted_proxy"] = settings.PEFTHUB_TRUSTED_PROXY
        options["trusted_proxy_headers"] = settings.PEFTHUB_TRUSTED_PROXY_HEADERS
    elif settings.SECURE_SSL_REDIRECT:
        raise CommandError(
            "PEFTHUB_SECURE=1 needs PEFTHUB_TRUSTED_PROXY (the TLS proxy's address, or * when only the proxy can "
            "reach this port): without it X-Forwarded-Proto is ignored, every request looks like plain http and is "
            "redirected to https forever.")
    return options


def make_server(application, *, host: str, port: int, threads: int):
    """The server, listening but not yet serving: ``.run()`` serves until interrupted."""
    listeners: dict = {}
    server = create_server(application, map=listeners, **waitress_options(host=host, port=port, threads=threads))
    for dispatcher in listeners.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = HubChannel
    return server


def serve(application, *, host: str, port: int, threads: int) -> None:
    """Serve ``application`` until interrupted."""
    server = make_server(application, host=host, port=port, threads=threads)
    server.print_listen("Serving on http://{}:{}")
    server.run()
