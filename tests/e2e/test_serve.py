"""`pefthub-server serve` on the wire: gunicorn's workers keep the socket rules of `up`, and more.

The real production server (a gunicorn master and 2 workers, in a process group of its own)
on the test's database and a Redis broker: bodies bounded before they are read, HEAD without
a body, proxy headers from the trusted proxy only, static files, a SIGHUP reload that drops
nothing, JSON logs carrying the request id, and a refusal to start on an unmigrated database.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import BIN, _database_of_its_own
from tests.e2e.serve import (
    ServeServer,
    migrate,
    request_ids_logged,
    running_serve,
    serve_env,
    serving,
    wait_for_workers,
)
from tests.e2e.test_server_protocol import HEAD_PATHS, _answer, _headers, _post_headers, _read_until_closed
from tests.fixtures.metrics import sample
from tests.fixtures.services import children

LIMIT = 1024 * 1024  # PEFTHUB_MAX_REQUEST_BODY of the server below
REDIS = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"PEFTHUB_MAX_REQUEST_BODY": str(LIMIT), "CELERY_BROKER_URL": REDIS}
    with running_serve(tmp_path_factory.mktemp("serve"), "--workers", "2", "--threads", "4", env=env) as running:
        yield running


def _connect(server: ServeServer):
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_two_worker_processes_serve_the_api(server):
    assert len(wait_for_workers(server, 2)) == 2
    assert requests.get(f"{server.url}/api/v1/").json()["version"]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_has_no_body_and_the_next_answer_on_the_connection_is_intact(server, path):
    host = server.url.removeprefix("http://")
    with _connect(server) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                     f"GET /api/v1/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        wire = _read_until_closed(sock)
    head, rest = wire.split(b"\r\n\r\n", 1)
    status, headers = _headers(head)
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), (path, status, rest[:200])
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["version"]
    if "content-length" in headers:
        get = requests.get(server.url + path, allow_redirects=False)
        assert (status, int(headers["content-length"])) == (get.status_code, len(get.content)), path


def test_a_100_mb_post_is_refused_after_its_headers_and_the_connection_closed(server):
    def refused() -> float:
        metrics = requests.get(f"{server.url}/metrics").text
        return sample(metrics, "pefthub_http_requests_total", method="POST", route="api/v1/repos", status="413")

    before = refused()
    with _connect(server) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 100 * 1024**2))
        started = time.monotonic()
        status, headers, body = _answer(sock)  # read until the server closes: it does not wait for the body
    assert status == 413 and time.monotonic() - started < 5
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert body["error"]["code"] == "too_large" and body["error"]["detail"] == {"limit": LIMIT}
    assert "PEFTHUB_MAX_REQUEST_BODY" in body["error"]["message"]
    assert refused() == before + 1  # counted like any answer


def test_a_body_sent_anyway_is_not_read(server):
    with _connect(server) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 100 * 1024**2))
        sent, chunk = 0, b"x" * 1024**2
        try:
            while sent < 100 * 1024**2:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    assert sent < 20 * 1024**2


def test_expect_continue_gets_413_instead_of_100(server):
    with _connect(server) as sock:
        sock.sendall(_post_headers("/api/v1/repos", 50 * 1024**2, "Expect: 100-continue"))
        wire = _read_until_closed(sock)
    assert wire.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in wire


def test_expect_continue_within_the_limit_gets_100_then_the_answer(server):
    token = server.adduser("patient", "--team", "waits", "--role", "admin")
    body = json.dumps({"namespace": "waits", "name": "after-continue", "kind": "dataset"}).encode()
    with _connect(server) as sock:
        sock.sendall(_post_headers("/api/v1/repos", len(body), "Expect: 100-continue", "Connection: close",
                                   f"Authorization: Bearer {token}"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        wire = _read_until_closed(sock)
    assert wire.startswith(b"HTTP/1.1 201 "), wire[:300]  # the body was read after the 100: the repository exists
    assert json.loads(wire.split(b"\r\n\r\n", 1)[1])["name"] == "after-continue"


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    sent, answer, chunk = 0, b"", b"10000\r\n" + b"x" * 65536 + b"\r\n"
    with _connect(server) as sock:
        sock.sendall(b"POST /api/v1/repos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 4 * LIMIT and not select.select([sock], [], [], 0.05)[0]:
                sock.sendall(chunk)
                sent += 65536
            answer = _read_until_closed(sock)
        except ConnectionResetError:
            pass
    assert LIMIT <= sent <= LIMIT + 8 * 65536
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 "), answer[:100]


def test_a_chunked_body_within_the_limit_reaches_the_view(server):
    token = server.adduser("chunky", "--team", "chunks", "--role", "admin")
    payload = json.dumps({"namespace": "chunks", "name": "by-chunks", "kind": "dataset"}).encode()

    def pieces():
        yield payload[:10]
        yield payload[10:]

    response = requests.post(f"{server.url}/api/v1/repos", data=pieces(),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 201, response.text
    assert (response.json()["namespace"], response.json()["name"]) == ("chunks", "by-chunks")


def test_a_signed_blob_upload_may_be_larger_than_the_limit(server, open_hub, tmp_path):
    token = server.adduser("alice", "--team", "acme", "--role", "admin")
    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(json.dumps({"text": f"row {i} " + "y" * 200}) + "\n" for i in range(3 * LIMIT // 200))
    (folder / "train.jsonl").write_text(rows)
    version = open_hub(url=server.url, token=token, cache_dir=tmp_path / "cache").push(folder, "acme/big", kind="dataset")
    assert version.files[0].sha256 == hashlib.sha256(rows.encode()).hexdigest()


def test_proxy_headers_from_an_untrusted_peer_are_cleared(server):
    spoofed = requests.get(f"{server.url}/api/v1/", headers={"X-Forwarded-Proto": "https", "X-Request-ID": "spoof-1",
                                                             "X-Forwarded-Host": "evil.example",
                                                             "X-Forwarded-For": "203.0.113.9"})
    assert spoofed.json()["links"]["repos"] == f"{server.url}/api/v1/repos"
    access = [line for line in request_ids_logged(server, "spoof-1") if line["logger"] == "pefthub.access"]
    assert [line["client"] for line in access] == ["127.0.0.1"]  # the peer, not what it claimed


def test_static_files_are_served(server):
    css = requests.get(f"{server.url}/static/admin/css/base.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css") and len(css.content) > 1000


def test_probes_answer_whatever_the_host_header(server):
    for path in ("/healthz", "/readyz", "/metrics"):
        answer = requests.get(f"{server.url}{path}", headers={"Host": "10.1.2.3:8000"})
        assert answer.status_code == 200, (path, answer.text[:200])
    assert requests.get(f"{server.url}/api/v1/", headers={"Host": "10.1.2.3:8000"}).status_code == 400


def test_logs_are_json_with_the_request_id_and_an_access_line(server):
    answer = requests.get(f"{server.url}/api/v1/repos/acme/nope", headers={"X-Request-ID": "serve-test-req-1"})
    assert answer.status_code == 404 and answer.headers["X-Request-ID"] == "serve-test-req-1"
    lines = request_ids_logged(server, "serve-test-req-1")
    access = [line for line in lines if line["logger"] == "pefthub.access"]
    assert len(access) == 1, lines
    line = access[0]
    assert (line["method"], line["route"], line["status"]) == ("GET", "api/v1/repos/<ns>/<name>", 404)
    assert line["bytes"] == len(answer.content) and line["duration_ms"] > 0 and line["level"] == "INFO"
    assert line["time"].endswith("+00:00")
    assert all(set(entry) >= {"time", "level", "logger", "message"} for entry in server.log_lines())


def test_sighup_replaces_the_workers_and_drops_no_request(server):
    before = set(wait_for_workers(server, 2))
    failures, answered, stop = [], [0], threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                status = session.get(f"{server.url}/api/v1/", timeout=10).status_code
                if status != 200:
                    failures.append(status)
                answered[0] += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGHUP)
        after = wait_for_workers(server, 2, other_than=before)
        counted = answered[0]
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and answered[0] > counted  # served all along, and by the new workers too
    assert not set(after) & before and server.proc.poll() is None


def test_serve_refuses_an_unmigrated_database_naming_migrate(tmp_path):
    with _database_of_its_own() as database_url:
        env = serve_env(tmp_path, database_url)
        if database_url is None:
            (tmp_path / "db.sqlite3").touch()  # a database, but without the hub's tables
        done = subprocess.run([str(BIN / "pefthub-server"), "serve", "--port", "1"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode != 0
    assert "pefthub-server migrate" in done.stderr and "lacks" in done.stderr, done.stderr


def test_behind_a_trusted_proxy_https_is_honoured_and_probes_are_not_redirected(tmp_path):
    env = {"PEFTHUB_SECURE": "1", "PEFTHUB_TRUSTED_PROXY": "127.0.0.1", "DJANGO_ALLOWED_HOSTS": "127.0.0.1,hub.example",
           "DJANGO_SECRET_KEY": "a-production-grade-secret-for-this-test-only-0123456789abcdef"}
    with running_serve(tmp_path / "hub", "--workers", "1", env=env) as hub:
        named = requests.get(f"{hub.url}/api/v1/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hub.example",
                                                            "X-Forwarded-For": "203.0.113.9", "X-Request-ID": "proxied-1"})
        assert named.json()["links"]["repos"] == "https://hub.example/api/v1/repos"
        access = [line for line in request_ids_logged(hub, "proxied-1") if line["logger"] == "pefthub.access"]
        assert [line["client"] for line in access] == ["203.0.113.9"]  # the client the trusted proxy names
        plain = requests.get(f"{hub.url}/api/v1/", allow_redirects=False)
        assert plain.status_code == 301 and plain.headers["Location"].startswith("https://127.0.0.1")
        assert requests.get(f"{hub.url}/healthz", allow_redirects=False).status_code == 200


def test_secure_without_a_trusted_proxy_refuses_to_start(tmp_path):
    secure = {"PEFTHUB_SECURE": "1", "DJANGO_ALLOWED_HOSTS": "hub.example",
              "DJANGO_SECRET_KEY": "a-production-grade-secret-for-this-test-only-0123456789abcdef"}
    with _database_of_its_own() as database_url:
        env = serve_env(tmp_path, database_url, secure)
        migrate(env)
        done = subprocess.run([str(BIN / "pefthub-server"), "serve", "--port", "1"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode != 0 and "PEFTHUB_SECURE=1 needs PEFTHUB_TRUSTED_PROXY" in done.stderr, done.stderr


def test_serve_starts_no_worker_and_removes_its_metrics_folder_when_stopped(tmp_path):
    """Even on the embedded broker, where `up` would start a pefthub-worker: serve's tree is gunicorn alone."""
    with running_serve(tmp_path / "hub", "--workers", "1", env={"CELERY_BROKER_URL": None}) as hub:
        workers = wait_for_workers(hub, 1)
        assert children(workers[0]) == []  # the gunicorn worker started nothing either
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{hub.proc.pid}/environ").read_text().split("\0") if "=" in item)
        folder = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
        assert requests.get(f"{hub.url}/metrics").status_code == 200
        assert list(folder.glob("*.db"))  # the worker's counts live there
        assert requests.get(f"{hub.url}/readyz").json()["checks"]["broker"]["kind"] == "embedded"
    assert hub.proc.returncode == 0 and not folder.exists()


def test_a_killed_servers_metrics_folder_is_removed_by_the_next_serve(tmp_path):
    with running_serve(tmp_path / "hub", "--workers", "1") as hub:
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{hub.proc.pid}/environ").read_text().split("\0") if "=" in item)
        folder = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
        os.killpg(hub.proc.pid, signal.SIGKILL)  # no on_exit: the folder stays behind
        hub.proc.wait()
        assert folder.exists()
        with serving(hub.env, "--workers", "1", log=tmp_path / "again.log"):
            assert not folder.exists()
