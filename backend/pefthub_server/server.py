"""The HTTP servers: waitress for `pefthub-server up`, gunicorn for `serve`; three rules kept at the socket by both.

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

Under `serve` (gunicorn, :mod:`pefthub_server.gunicorn_conf`) the same rules hold by other means.
gunicorn hands the application an unread body, so :class:`BoundedBody` answers the 413 before
reading it, and :func:`refuses_body` (gunicorn's ``pre_request`` hook) withholds the
``100 Continue`` from such a request and closes its connection after the 413. gunicorn sends
no body with a HEAD answer itself. Proxy headers go through waitress's own
``proxy_headers_middleware`` (:func:`production_application`), the code `up` runs, with
gunicorn's handling of them turned off.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from urllib.parse import parse_qs

from django.conf import settings
from django.core.management.base import CommandError
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.proxy_headers import proxy_headers_middleware
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import RequestEntityTooLarge

from pefthub_server.core.errors import error_body
from pefthub_server.core.middleware import access_logged, route_of_path
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


def check_proxy_settings() -> None:
    """Refuse PEFTHUB_SECURE=1 without PEFTHUB_TRUSTED_PROXY: every request would be redirected to https forever."""
    if settings.SECURE_SSL_REDIRECT and not settings.PEFTHUB_TRUSTED_PROXY:
        raise CommandError(
            "PEFTHUB_SECURE=1 needs PEFTHUB_TRUSTED_PROXY (the TLS proxy's address, or * when only the proxy can "
            "reach this port): without it X-Forwarded-Proto is ignored, every request looks like plain http and is "
            "redirected to https forever.")


def waitress_options(*, host: str, port: int, threads: int) -> dict:
    """The keyword arguments for waitress: listen address, threads, limits and proxy trust from settings."""
    options = {
        "host": host, "port": port, "threads": threads, "ident": "pefthub", "channel_timeout": 300,
        # The largest body any request may send; each request gets its own, smaller, bound (BoundedRequest).
        "max_request_body_size": max(settings.PEFTHUB_MAX_FILE_SIZE, settings.PEFTHUB_MAX_REQUEST_BODY) + 1,
    }
    check_proxy_settings()
    if settings.PEFTHUB_TRUSTED_PROXY:
        options["trusted_proxy"] = settings.PEFTHUB_TRUSTED_PROXY
        options["trusted_proxy_headers"] = settings.PEFTHUB_TRUSTED_PROXY_HEADERS
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


# --- the production server (gunicorn) ---------------------------------------------------------

_SPOOL_IN_MEMORY = 1024 * 1024  # a chunked body larger than this is spooled to a temporary file


def _declared_length(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def refuses_body(method: str, path: str, query: str, headers: dict[str, str]) -> tuple[bool, bool]:
    """(refuse before reading, close after answering) for a request with these upper-case ``headers``.

    A declared length over the route's limit is refused before a byte of it is read; after any
    chunked request the connection closes, since its body may be refused part-way.
    """
    limit, _ = body_limit(method, path, query)
    length = _declared_length(headers.get("CONTENT-LENGTH"))
    chunked = "chunked" in headers.get("TRANSFER-ENCODING", "").lower()
    too_large = length is not None and length > limit
    return too_large, too_large or chunked


class BoundedBody:
    """WSGI middleware: the body rule of `up` for a server that hands the application an unread body.

    A Content-Length over the route's limit (:func:`body_limit`) gets the 413 without a byte of the
    body read. A chunked body is read up to the limit into a spool (memory, then a temporary file,
    as waitress does) and handed on with its length, or refused with the 413 once it passes it.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        limit, setting = body_limit(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                                    environ.get("QUERY_STRING", ""))
        length = _declared_length(environ.get("CONTENT_LENGTH"))
        if length is not None and length > limit:
            return self._refuse(environ, start_response, BodyTooLarge(limit, setting, length))
        if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # closed with the request's environ (a temporary file is deleted when closed)
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
            size, stream = 0, environ["wsgi.input"]
            while chunk := stream.read(min(65536, limit + 1 - size)):  # one byte past the limit is enough to refuse
                size += len(chunk)
                if size > limit:
                    spool.close()
                    return self._refuse(environ, start_response, BodyTooLarge(limit, setting, None))
                spool.write(chunk)
            spool.seek(0)
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = spool, str(size)
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(environ, start_response, error: BodyTooLarge):
        """The 413, logged and counted like every answer (no request id: the hub never saw the request)."""
        status, headers, body = error.to_response()
        access_logged(method=environ["REQUEST_METHOD"], route=route_of_path(environ.get("PATH_INFO", "")), status=413,
                      seconds=0.0, size=len(body), client=environ.get("REMOTE_ADDR", ""))
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def production_application():
    """The WSGI application `serve` runs: the hub, its bodies bounded, proxy headers trusted only from the proxy."""
    from pefthub_server.wsgi import application

    check_proxy_settings()
    trusted = settings.PEFTHUB_TRUSTED_PROXY or None
    return proxy_headers_middleware(BoundedBody(application), trusted_proxy=trusted,
                                    trusted_proxy_headers=set(settings.PEFTHUB_TRUSTED_PROXY_HEADERS),
                                    clear_untrusted=True)
