"""SDK test fixtures: the real hub (pytest-django's live server, real HTTP, threaded) behind a
recording, fault-injecting proxy (proxy.py), with state pushed through its API (state.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pefthub import Hub

from .proxy import Proxy
from .state import Seed, Worker


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the developer's own hub settings, config file or cache."""
    for name in ("PEFTHUB_URL", "PEFTHUB_TOKEN", "PEFTHUB_CACHE", "PEFTHUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PEFTHUB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def hub_url(live_server, transactional_db, monkeypatch):
    """The real hub's own address (the SDK under test goes through ``proxy`` instead)."""
    import redis
    from django.conf import settings
    from django.core.servers.basehttp import WSGIRequestHandler

    from pefthub.protocol.jobs import QUEUES

    # Django's test server writes a response's status line, headers and body in separate
    # sends; with Nagle's algorithm each waits for the client's delayed ACK (40 ms a
    # request). Sending at once changes only the timing (this suite: 75 s -> 28 s).
    setup = WSGIRequestHandler.setup

    def setup_without_nagle(handler: WSGIRequestHandler) -> None:
        handler.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setup(handler)

    monkeypatch.setattr(WSGIRequestHandler, "setup", setup_without_nagle)
    yield live_server.url
    # Jobs submitted here were sent to the broker, and no worker consumes them: drop them.
    with redis.Redis.from_url(settings.CELERY_BROKER_URL) as broker:
        broker.delete(*QUEUES)


@pytest.fixture
def proxy(hub_url):
    front = Proxy(hub_url)
    yield front
    front.stop()
    assert not front.failures, "the proxy could not answer as the test asked"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_hub(proxy, alice, tmp_path, sleeps, open_hub):
    """``make_hub(**kwargs)``: a Hub for alice on the hub through the proxy, with a private
    cache; retries record their pauses in ``sleeps`` instead of sleeping."""

    def make(**kwargs: Any) -> Hub:
        hub = open_hub(**{"url": proxy.url, "token": alice.token, "cache_dir": tmp_path / "cache", **kwargs})
        hub._http.sleep = sleeps.append
        return hub

    return make


@pytest.fixture
def seed(hub_url, alice, tmp_path, request) -> Seed:
    """alice's state, pushed straight to the hub; the tiny base and adapter are built on first use."""
    state = Seed(hub_url, alice.token, tmp_path / "seed", lambda: request.getfixturevalue("tiny_base"),
                 lambda: request.getfixturevalue("tiny_adapter")[0])
    yield state
    state.close()


@pytest.fixture
def worker(hub_url, tmp_path) -> Worker:
    from tests.conftest import worker_token

    player = Worker(hub_url, worker_token(), tmp_path / "worker")
    yield player
    player.close()


@pytest.fixture
def job_inputs(seed):
    """What a train job reads: the base model and two versions of ``acme/support-data``."""
    seed.base()
    seed.push("acme/support-data", {"train.jsonl": b'{"text": "hello"}\n'})
    seed.push("acme/support-data", {"train.jsonl": b'{"text": "hello"}\n{"text": "world"}\n'})
    return seed


@pytest.fixture
def adapters(seed):
    """``acme/bot`` versions 1-3 and ``acme/sql`` version 1, LoRAs on the tiny base: what merges read."""
    seed.base()
    for variant in (1, 2, 3):
        seed.adapter("acme/bot", variant)
    seed.adapter("acme/sql", 4)
    return seed


@pytest.fixture
def env(monkeypatch, proxy, alice, seed, tmp_path) -> Seed:
    """The CLI's environment: alice on the hub through the proxy. Returns the seed (alice, straight to the hub)."""
    monkeypatch.setenv("PEFTHUB_URL", proxy.url)
    monkeypatch.setenv("PEFTHUB_TOKEN", alice.token)
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    return seed


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: run ``pefthub`` in this process; (exit code, stdout, stderr)."""
    from pefthub.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output (not, say, the tiny models' build on first use)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


class FakeClock:
    """Stands in for ``time`` inside pefthub.jobs: sleeping moves the clock, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("pefthub.jobs._sleep", fake.sleep)
    monkeypatch.setattr("pefthub.jobs._monotonic", fake.monotonic)
    return fake
