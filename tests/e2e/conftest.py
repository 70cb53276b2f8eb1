"""End-to-end fixtures: a live hub server (real HTTP, threaded), SDK clients per person, and
``running_hub``: ``pefthub-server up`` as users run it, in a process of its own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests.fixtures.services import free_port

BIN = Path(sys.executable).parent
#: what the test process sets for itself and a server users start would not have
_TEST_ONLY_ENV = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PEFTHUB_STORAGE", "PEFTHUB_DATA_DIR", "CELERY_BROKER_URL")


@pytest.fixture
def hub_for(live_server, tmp_path, transactional_db, open_hub):
    """``hub_for(person, token=None)``: that person's SDK client on the live hub, with a cache of its own."""

    def make(person, *, token: str | None = None):
        return open_hub(url=live_server.url, token=token or person.token, cache_dir=tmp_path / f"cache-{person.username}")

    return make


@pytest.fixture
def http_log(monkeypatch):
    """Every HTTP request the SDK sends from this process: (method, url). Calls go through unchanged."""
    seen: list[tuple[str, str]] = []
    original = requests.Session.send

    def send(self, request, **kwargs):
        seen.append((request.method, request.url))
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return seen


@dataclass
class UpServer:
    """A running ``pefthub-server up``: its URL, the environment it runs with, its process and log."""

    url: str
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path

    def adduser(self, username: str, *args: str) -> str:
        """``pefthub-server adduser USERNAME ARGS...`` in a fresh process against this server's data; the token."""
        done = subprocess.run([str(BIN / "pefthub-server"), "adduser", username, *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@contextlib.contextmanager
def _database_of_its_own() -> Iterator[str | None]:
    """On PostgreSQL (DATABASE_URL), a throw-away database beside the test database; on SQLite, None."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        yield None
        return
    import psycopg

    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'pefthub'}_up_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def hub_env(data_dir: Path, database_url: str | None, env: dict[str, str | None] | None = None,
            **fixed: str) -> dict[str, str]:
    """The environment of a hub process: the user's shell's (less the test-only variables), its own data dir and
    database, ``fixed``, then ``env`` (a value of None removes the variable)."""
    server_env = {k: v for k, v in os.environ.items() if k not in _TEST_ONLY_ENV}
    server_env.update({"PEFTHUB_DATA_DIR": str(data_dir), **fixed})
    if database_url:
        server_env["DATABASE_URL"] = database_url
    for key, value in (env or {}).items():
        if value is None:
            server_env.pop(key, None)
        else:
            server_env[key] = value
    return server_env


@contextlib.contextmanager
def running_hub(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[UpServer]:
    """``pefthub-server up --port <free> ARGS`` with its own data dir (and database on PostgreSQL), until the block ends.

    ``env`` adds to (or, with a value of None, removes from) the environment a user's shell would give it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with _database_of_its_own() as database_url:
        server_env = hub_env(data_dir, database_url, env)
        port = free_port()
        log = data_dir / "server.log"
        with open(log, "wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen([str(BIN / "pefthub-server"), "up", "--port", str(port), *args], env=server_env,
                                    stdout=out, stderr=subprocess.STDOUT)
        server = UpServer(f"http://127.0.0.1:{port}", server_env, proc, log)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    requests.get(f"{server.url}/api/v1/", timeout=1, allow_redirects=False)
                    break  # it answers: any status will do (PEFTHUB_SECURE redirects plain http)
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pefthub-server up did not start:\n{log.read_text()}")
                time.sleep(0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
