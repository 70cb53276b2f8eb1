"""The repository list's page cache across processes: `pefthub-server serve --workers 2`, each worker with pages cached.

Kept-alive connections are held open on both gunicorn workers (which worker holds each is read from /proc), each
worker caches carol's page, then writes land through the API (whichever worker takes them) and from another process
(`pefthub-server adduser`): the next page on every connection, so from both workers, is the fresh one.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest
import requests

from tests.e2e.serve import ServeServer, running_serve, wait_for_workers

REDIS = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_serve(tmp_path_factory.mktemp("serve-lists"), "--workers", "2", "--threads", "2",
                       env={"CELERY_BROKER_URL": REDIS}) as running:
        yield running


def _server_socket_holder(server: ServeServer, conn: http.client.HTTPConnection) -> int | None:
    """The worker process holding the server's end of ``conn`` (matched by ports in /proc/net/tcp, then inode)."""
    client_port, server_port = conn.sock.getsockname()[1], conn.sock.getpeername()[1]
    inodes = {fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
              if int(fields[1].split(":")[1], 16) == server_port and int(fields[2].split(":")[1], 16) == client_port}
    for pid in server.workers():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in {f"socket:[{inode}]" for inode in inodes}:
                    return pid
            except OSError:
                continue
    return None


def _page(conn: http.client.HTTPConnection, token: str) -> list[str]:
    conn.request("GET", "/api/v1/repos?page_size=100", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    return [row["id"] for row in json.loads(body)["results"]]


def test_every_workers_next_page_after_a_write_anywhere_is_the_fresh_one(server) -> None:
    workers = set(wait_for_workers(server, 2))
    alice = server.adduser("alice", "--team", "acme", "--role", "admin")
    carol = server.adduser("carol")

    def write(method: str, path: str, body: dict) -> None:
        answer = requests.request(method, f"{server.url}/api/v1/{path}", json=body,
                                  headers={"Authorization": f"Bearer {alice}"}, timeout=30)
        assert answer.status_code in (200, 201), answer.text

    write("POST", "repos", {"namespace": "acme", "name": "shared", "kind": "model"})
    write("POST", "repos", {"namespace": "acme", "name": "hidden", "kind": "model"})
    host, port = server.url.removeprefix("http://").split(":")
    conns, held = [], {}
    while set(held.values()) != workers or min(list(held.values()).count(w) for w in workers) < 2:
        assert len(conns) < 60, f"connections spread over {held.values()}"
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        assert _page(conn, carol) == []  # connected, and carol's page cached by the worker that took it
        conns.append(conn)
        held[len(conns) - 1] = _server_socket_holder(server, conn)
    try:
        def pages() -> set[tuple[str, ...]]:
            return {tuple(_page(conn, carol)) for conn in conns}

        assert pages() == {()}
        write("PATCH", "repos/acme/shared", {"visibility": "internal"})  # through one of the workers
        assert pages() == {("acme/shared",)}
        assert server.adduser("carol", "--team", "acme", "--role", "read")  # another process: a membership
        assert pages() == {("acme/hidden", "acme/shared")}
        write("PATCH", "repos/acme/shared", {"description": "described"})
        for conn in conns:
            conn.request("GET", "/api/v1/repos?page_size=100", headers={"Authorization": f"Bearer {carol}"})
            response = conn.getresponse()
            assert json.loads(response.read())["results"][1]["description"] == "described"
        # every connection is still the one on the worker that cached the old pages
        assert {_server_socket_holder(server, conn) for conn in conns} == workers
    finally:
        for conn in conns:
            conn.close()
