"""SDK test fixtures (pure SDK: no Django, no hub server)."""

from __future__ import annotations

from typing import Any

import pytest

from pefthub import Hub

from .fake_jobs import FakeJobs
from .fakes import TOKEN, FakeHub, FakeServer


@pytest.fixture(autouse=True)
def local_storage():
    """Shadows the backend suite's autouse fixture: SDK tests need no Django."""
    yield None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the developer's own hub settings, config file or cache."""
    for name in ("PEFTHUB_URL", "PEFTHUB_TOKEN", "PEFTHUB_CACHE", "PEFTHUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PEFTHUB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.stop()


@pytest.fixture
def fake_hub(server) -> FakeHub:
    return FakeHub(server)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_hub(fake_hub, tmp_path, sleeps):
    """``make_hub(**kwargs)``: a Hub on the fake, with a private cache; retries
    record their pauses in ``sleeps`` instead of sleeping."""
    hubs: list[Hub] = []

    def make(**kwargs: Any) -> Hub:
        kwargs.setdefault("url", fake_hub.url)
        kwargs.setdefault("token", TOKEN)
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        kwargs.setdefault("progress", False)
        hub = Hub(**kwargs)
        hub._http.sleep = sleeps.append
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()




@pytest.fixture
def fake_jobs(fake_hub) -> FakeJobs:
    return FakeJobs(fake_hub)


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
