"""``pefthub-server serve`` as operators run it: a real gunicorn master and its workers, in a process group of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.e2e.conftest import BIN, _database_of_its_own, hub_env
from tests.fixtures.services import children, free_port, wait_until


@dataclass
class ServeServer:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path

    def workers(self) -> list[int]:
        """The gunicorn worker processes (the master's children)."""
        return children(self.proc.pid)

    def log_lines(self) -> list[dict]:
        """The server's log so far, each line parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def adduser(self, username: str, *args: str) -> str:
        done = subprocess.run([str(BIN / "pefthub-server"), "adduser", username, *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def serve_env(data_dir: Path, database_url: str | None, env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a `serve` process: the user's shell's, its own data dir and database, then ``env``."""
    return hub_env(data_dir, database_url, env, PYTHONUNBUFFERED="1",
                   DJANGO_SECRET_KEY="test-only-secret-key-not-for-production-0123456789")


def migrate(server_env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "pefthub-server"), "migrate", "-v0"], env=server_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def serving(server_env: dict[str, str], *args: str, log: Path) -> Iterator[ServeServer]:
    """``pefthub-server serve --host 127.0.0.1 --port <free> ARGS`` on ``server_env`` until the block ends (SIGTERM)."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN / "pefthub-server"), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                                env=server_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServeServer(f"http://127.0.0.1:{port}", server_env, proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"pefthub-server serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return requests.get(f"{server.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=90, what=f"pefthub-server serve on {server.url}", interval=0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def running_serve(data_dir: Path, *args: str, env: dict[str, str | None] | None = None) -> Iterator[ServeServer]:
    """A migrated database of its own (on the test's PostgreSQL) and `serve ARGS` on it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _database_of_its_own() as database_url:
        server_env = serve_env(data_dir, database_url, env)
        migrate(server_env)
        with serving(server_env, *args, log=data_dir / "serve.log") as server:
            yield server


def wait_for_workers(server: ServeServer, count: int, *, other_than: set[int] = frozenset()) -> list[int]:
    """The master's ``count`` workers once they are all up (and none of ``other_than`` is left)."""
    def ready():
        pids = set(server.workers())
        return sorted(pids) if len(pids) == count and not pids & set(other_than) else None

    return wait_until(ready, timeout=60, what=f"{count} new gunicorn workers")


def request_ids_logged(server: ServeServer, request_id: str) -> list[dict]:
    """The log lines carrying ``request_id``, waiting a moment for the workers to write them."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in server.log_lines() if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
