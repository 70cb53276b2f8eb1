"""`pefthub-server up` on the wire: HEAD without bodies, bodies bounded before they are read, proxy trust.

Raw sockets and http.client against the server users run (a subprocess), because test
servers hide exactly these faults: runserver and pytest-django's live server strip HEAD
bodies, and neither spools request bodies the way waitress does.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import select
import socket
import time

import pytest
import requests

from tests.e2e.conftest import running_hub

LIMIT = 1024 * 1024  # PEFTHUB_MAX_REQUEST_BODY of the server below

#: one of each kind of answer: API (DRF, catch-all, 401, 404), /hf (404s, 405), web pages, admin, docs, static
HEAD_PATHS = [
    "/api/v1/", "/api/v1/nope", "/api/v1/whoami", "/api/v1/repos", "/api/v1/repos/acme/nope", f"/api/v1/blobs/{'0' * 64}",
    "/api/schema/", "/api/docs/", "/hf/acme/nope/resolve/main/config.json", "/hf/api/models/acme/nope", "/hf/nowhere",
    "/", "/nope/nope/nope", "/admin/login/", "/static/admin/css/base.css",
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with running_hub(tmp_path_factory.mktemp("hub"), "--no-worker", env={"PEFTHUB_MAX_REQUEST_BODY": str(LIMIT)}) as server:
        yield server


def _connect(hub) -> socket.socket:
    host, port = hub.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _headers(block: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = block.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_has_no_body_and_the_next_answer_on_the_connection_is_intact(hub, path):
    host = hub.url.removeprefix("http://")  # as requests sends it: the GET below must build the same links
    with _connect(hub) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                     f"GET /api/v1/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        wire = _read_until_closed(sock)
    head, rest = wire.split(b"\r\n\r\n", 1)
    status, headers = _headers(head)
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), (path, status, rest[:200])  # nothing between the two answers
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["version"]
    if "content-length" in headers:  # RFC 9110: what GET would send, or nothing
        get = requests.get(hub.url + path, allow_redirects=False)
        assert (status, int(headers["content-length"])) == (get.status_code, len(get.content)), path


def test_head_then_get_with_http_client_on_one_keep_alive_connection(hub):
    conn = http.client.HTTPConnection(hub.url.removeprefix("http://"), timeout=10)
    for _ in range(3):
        for path in ("/hf/acme/nope/resolve/main/tokenizer_config.json", "/api/v1/nope", "/nope/nope/nope"):
            conn.request("HEAD", path)
            head = conn.getresponse()
            assert head.status == 404 and head.read() == b""
            conn.request("GET", "/api/v1/")
            get = conn.getresponse()
            assert get.status == 200 and json.loads(get.read())["version"]
    conn.close()


def _post_headers(path: str, length: int, *extra: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    wire = _read_until_closed(sock)
    head, body = wire.split(b"\r\n\r\n", 1)
    status, headers = _headers(head)
    return status, headers, json.loads(body)


def test_a_100_mb_anonymous_post_is_refused_after_its_headers(hub):
    with _connect(hub) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 100 * 1024**2))
        started = time.monotonic()
        status, headers, body = _answer(sock)  # the server answers and closes without waiting for the body
    assert status == 413 and time.monotonic() - started < 5
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert body["error"]["code"] == "too_large" and body["error"]["detail"] == {"limit": LIMIT}
    assert "PEFTHUB_MAX_REQUEST_BODY" in body["error"]["message"] and "/uploads" in body["error"]["message"]


def test_a_body_sent_anyway_is_not_read(hub):
    with _connect(hub) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 100 * 1024**2))
        sent, chunk = 0, b"x" * 1024**2
        try:
            while sent < 100 * 1024**2:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset: the server closed the connection instead of reading on
            pass
    assert sent < 20 * 1024**2  # socket buffers took a few MB; the server took none of it


def test_expect_continue_gets_413_instead_of_100(hub):
    with _connect(hub) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 50 * 1024**2, "Expect: 100-continue"))
        wire = _read_until_closed(sock)
    assert wire.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in wire


def test_a_chunked_body_is_cut_off_at_the_limit(hub):
    sent, answer, chunk = 0, b"", b"10000\r\n" + b"x" * 65536 + b"\r\n"
    with _connect(hub) as sock:
        sock.sendall(b"POST /api/v1/repos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 4 * LIMIT and not select.select([sock], [], [], 0.05)[0]:
                sock.sendall(chunk)
                sent += 65536
            answer = sock.recv(65536)
        except ConnectionResetError:
            pass  # the server closed with our last bytes unread: the kernel reset, dropping its 413 too
    assert LIMIT <= sent <= LIMIT + 4 * 65536  # read up to the limit, refused right after it
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 "), answer[:100]


def test_a_bad_or_missing_signature_gets_the_small_limit_on_blob_puts(hub):
    sha = "ab" * 32
    for query in ("", f"?expires={int(time.time()) + 600}&sig={'0' * 64}"):
        with _connect(hub) as sock:
            sock.sendall(_post_headers(f"/api/v1/blobs/{sha}{query}", 2 * LIMIT, method="PUT"))
            status, _, body = _answer(sock)
        assert status == 413 and "PEFTHUB_MAX_REQUEST_BODY" in body["error"]["message"], query


def test_a_signed_blob_upload_may_be_larger_than_the_limit(hub, open_hub, tmp_path):
    token = hub.adduser("alice", "--team", "acme", "--role", "admin")
    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(json.dumps({"text": f"row {i} " + "y" * 200}) + "\n" for i in range(3 * LIMIT // 200))
    (folder / "train.jsonl").write_text(rows)
    assert len(rows) > 2 * LIMIT
    version = open_hub(url=hub.url, token=token, cache_dir=tmp_path / "cache").push(folder, "acme/big", kind="dataset")
    assert version.files[0].sha256 == hashlib.sha256(rows.encode()).hexdigest()


# --- behind a TLS proxy ------------------------------------------------------------------

SECURE = {"PEFTHUB_SECURE": "1", "DJANGO_ALLOWED_HOSTS": "127.0.0.1,hub.example",
          "DJANGO_SECRET_KEY": "a-production-grade-secret-for-this-test-only-0123456789abcdef"}


def test_behind_a_trusted_proxy_https_is_honoured_and_plain_http_redirected(tmp_path):
    with running_hub(tmp_path / "hub", "--no-worker", env={**SECURE, "PEFTHUB_TRUSTED_PROXY": "127.0.0.1"}) as hub:
        proxied = requests.get(f"{hub.url}/api/v1/", headers={"X-Forwarded-Proto": "https"}, allow_redirects=False)
        assert proxied.status_code == 200 and proxied.headers["Strict-Transport-Security"].startswith("max-age=")
        assert proxied.json()["links"]["repos"].startswith("https://127.0.0.1")
        named = requests.get(f"{hub.url}/api/v1/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hub.example"})
        assert named.json()["links"]["repos"] == "https://hub.example/api/v1/repos"
        plain = requests.get(f"{hub.url}/api/v1/", allow_redirects=False)
        assert plain.status_code == 301 and plain.headers["Location"].startswith("https://127.0.0.1")


def test_proxy_headers_from_anyone_else_are_ignored(tmp_path):
    with running_hub(tmp_path / "hub", "--no-worker", env={**SECURE, "PEFTHUB_TRUSTED_PROXY": "10.9.9.9"}) as hub:
        spoofed = requests.get(f"{hub.url}/api/v1/", headers={"X-Forwarded-Proto": "https"}, allow_redirects=False)
        assert spoofed.status_code == 301 and "Strict-Transport-Security" not in spoofed.headers


def test_secure_without_a_trusted_proxy_refuses_to_start(tmp_path):
    with pytest.raises(RuntimeError, match="PEFTHUB_SECURE=1 needs PEFTHUB_TRUSTED_PROXY"), \
            running_hub(tmp_path / "hub", "--no-worker", env=SECURE):
        pass


# --- the waitress layer alone: no body on HEAD whatever the application sends ---------------


@pytest.fixture
def bare_server(settings, tmp_path):
    """pefthub_server.server around a plain WSGI app that streams without a length, or hands waitress a file."""
    import threading

    from pefthub_server.server import make_server

    data = tmp_path / "file.bin"
    data.write_bytes(b"file bytes " * 1000)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if environ["PATH_INFO"] == "/file":
            wrapper = environ.get("wsgi.file_wrapper")
            handle = data.open("rb")
            return wrapper(handle) if wrapper else iter(lambda: handle.read(4096), b"")
        return (chunk for chunk in (b"streamed ", b"without a length"))  # waitress cannot know the length

    server = make_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server.effective_port
    server.close()


@pytest.mark.parametrize("path", ["/stream", "/file"])
def test_head_sends_headers_only_whatever_the_application_returns(bare_server, path):
    with socket.create_connection(("127.0.0.1", bare_server), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        wire = _read_until_closed(sock)
    head, rest = wire.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b"", rest[:100]


def test_an_error_answer_to_head_has_no_body_either(bare_server):
    with socket.create_connection(("127.0.0.1", bare_server), timeout=10) as sock:
        sock.sendall(f"HEAD /stream HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * 1024**2}\r\n\r\n".encode())
        wire = _read_until_closed(sock)
    head, rest = wire.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 ") and rest == b""
