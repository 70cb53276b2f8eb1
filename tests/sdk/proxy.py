"""A recording, fault-injecting reverse proxy in front of the real hub (standard library only).

The SDK under test talks to :attr:`Proxy.url`. Every request is recorded as a
:class:`Seen` (what the client sent, and the status and body it got back) and
forwarded to the live server with its ``Host`` header intact, so the URLs the hub
hands out (signed blob downloads, local-backend uploads, ``next`` links) point back
at the proxy and pass through it too.

Rules change what a matching request gets, a number of times or for ever; the first
rule that matches and has uses left applies:

- :meth:`Proxy.reply`: a canned answer instead of the server's, or after it
  (``forward=True``: the server handled the request, its answer was lost);
- :meth:`Proxy.rewrite`: the server's answer with its body replaced;
- :meth:`Proxy.cut`: the server's answer, hung up on after some bytes of its body;
- :meth:`Proxy.drop_header`: a request header removed before forwarding (a server
  that ignores ``Range``);
- :meth:`Proxy.before`: one action run before each matching request is forwarded
  (a worker's next step between two polls of a job).

Every answer goes out with its ``Content-Length`` (none on ``HEAD``), so HTTP/1.1
keep-alive stays sound. An action that raises, or a hub that cannot be reached, is
answered with status 599 and kept in :attr:`Proxy.failures` (the fixture fails the test).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: headers that describe one connection, not the message: never passed on
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "content-length"})
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass
class Seen:
    """One request as the client sent it, and what it got back."""

    method: str
    path: str
    query: dict[str, str]  # the last value of each parameter
    headers: dict[str, str]  # lower-cased names
    body: bytes
    target: str = ""  # path and query, as requested
    status: int | None = None
    response: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def response_json(self) -> Any:
        return json.loads(self.response)


@dataclass
class Reply:
    """A canned answer: a JSON-able body or raw bytes."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> tuple[list[tuple[str, str]], bytes]:
        headers = list(self.headers.items())
        if isinstance(self.body, (bytes, bytearray)):
            return headers, bytes(self.body)
        return [("Content-Type", "application/json"), *headers], json.dumps(self.body).encode()


def error(status: int, code: str, message: str, **headers: str) -> Reply:
    """An answer in the hub's error shape."""
    return Reply(status, {"error": {"code": code, "message": message, "detail": None}}, dict(headers))


def json_body(change: Callable[[Any], object]) -> Callable[[bytes], bytes]:
    """A body rewrite that edits the decoded JSON in place."""

    def rewrite(body: bytes) -> bytes:
        data = json.loads(body)
        change(data)
        return json.dumps(data).encode()

    return rewrite


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    uses: int | None  # None: for ever
    reply: Reply | None = None
    forward: bool = False  # with a reply: the server handles the request first, its answer is lost
    rewrite: Callable[[bytes], bytes] | None = None
    cut_after: int | None = None
    drop_headers: frozenset[str] = frozenset()
    actions: list[Callable[[], object]] = field(default_factory=list)

    def matches(self, seen: Seen) -> bool:
        return self.uses != 0 and self.method in (seen.method, "*") and self.pattern.fullmatch(seen.path) is not None


#: what a request no rule matches gets: the server's answer, unchanged
_PASS = _Rule("*", re.compile(".*"), None)


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    length: int | None = None  # Content-Length to announce when it is not len(body) (a HEAD)


class Proxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seen: list[Seen] = []
        self.failures: list[str] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one write: no Nagle/delayed-ACK stalls

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = handle_one

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    # -- rules ------------------------------------------------------------------------
    def _add(self, method: str, pattern: str, uses: int | None, **how: Any) -> None:
        with self._lock:
            self._rules.append(_Rule(method, re.compile(pattern), uses, **how))

    def reply(self, method: str, pattern: str, reply: Reply, *, times: int | None = 1, forward: bool = False) -> None:
        """Answer ``reply`` instead of the server; with ``forward`` the server handles the request first."""
        self._add(method, pattern, times, reply=reply, forward=forward)

    def rewrite(self, method: str, pattern: str, change: Callable[[bytes], bytes], *, times: int | None = None) -> None:
        """Replace the server's response body with ``change(body)``."""
        self._add(method, pattern, times, rewrite=change)

    def cut(self, method: str, pattern: str, after: int, *, times: int | None = 1) -> None:
        """Announce the whole body, send ``after`` bytes of it, and hang up."""
        self._add(method, pattern, times, cut_after=after)

    def drop_header(self, method: str, pattern: str, name: str, *, times: int | None = None) -> None:
        """Forward matching requests without the header ``name``."""
        self._add(method, pattern, times, drop_headers=frozenset({name.lower()}))

    def before(self, method: str, pattern: str, *actions: Callable[[], object]) -> None:
        """Run the next of ``actions`` before forwarding each matching request, one per request."""
        self._add(method, pattern, len(actions), actions=list(actions))

    def _take(self, seen: Seen) -> _Rule | None:
        with self._lock:
            rule = next((r for r in self._rules if r.matches(seen)), None)
            if rule is not None and rule.uses is not None:
                rule.uses -= 1
            return rule

    # -- what was seen ----------------------------------------------------------------
    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and s.path.startswith(prefix)]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- serving ----------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(handler.rfile)
        else:
            body = handler.rfile.read(int(headers.get("content-length") or 0))
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        seen = Seen(handler.command, parts.path, query, headers, body, handler.path)
        with self._lock:
            self.seen.append(seen)
        rule = self._take(seen) or _PASS
        try:
            answer = self._answer(handler, rule, body)
        except Exception as exc:  # said to the client and kept for the test: never swallowed
            failure = f"{seen.method} {seen.target}: {type(exc).__name__}: {exc}"
            with self._lock:
                self.failures.append(failure)
            answer, rule = _Answer(599, [("Content-Type", "text/plain")], f"proxy: {failure}".encode()), _PASS
        seen.status, seen.response = answer.status, answer.body
        self._send(handler, answer, rule.cut_after)

    def _answer(self, handler: BaseHTTPRequestHandler, rule: _Rule, body: bytes) -> _Answer:
        if rule.actions:
            with self._lock:
                action = rule.actions.pop(0)
            action()
        if rule.reply is not None and not rule.forward:
            return _Answer(rule.reply.status, *rule.reply.payload())
        sent = [(k, v) for k, v in handler.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() not in rule.drop_headers]
        answer = self._forward(handler.command, handler.path, sent, body)
        if rule.reply is not None:
            return _Answer(rule.reply.status, *rule.reply.payload())
        if rule.rewrite is not None:
            answer.body = rule.rewrite(answer.body)
        return answer

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> _Answer:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            # The client's own Host goes on: the hub names itself (in URLs it hands out) after it.
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            length = response.getheader("Content-Length") if method == "HEAD" else None
            return _Answer(response.status, kept, payload, None if length is None else int(length))
        finally:
            conn.close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, answer: _Answer, cut_after: int | None) -> None:
        handler.send_response(answer.status)
        for name, value in answer.headers:
            handler.send_header(name, value)
        if answer.status not in _NO_BODY_STATUSES:
            handler.send_header("Content-Length", str(len(answer.body) if answer.length is None else answer.length))
        if cut_after is not None:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if handler.command == "HEAD" or answer.status in _NO_BODY_STATUSES:
            return
        handler.wfile.write(answer.body if cut_after is None else answer.body[:cut_after])
        handler.wfile.flush()
        if cut_after is not None:
            handler.close_connection = True


def _read_chunked(rfile: Any) -> bytes:
    out = b""
    while True:
        size = int(rfile.readline().strip(), 16)
        if size == 0:
            rfile.readline()
            return out
        out += rfile.read(size)
        rfile.readline()
