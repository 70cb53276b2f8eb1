"""End-to-end fixtures: a live hub server (real HTTP, threaded) and SDK clients per person."""

from __future__ import annotations

import pytest
import requests


@pytest.fixture
def hub_for(live_server, tmp_path, transactional_db):
    from pefthub import Hub

    hubs = []

    def make(person, *, token: str | None = None) -> Hub:
        hub = Hub(url=live_server.url, token=token or person.token, cache_dir=tmp_path / f"cache-{person.username}", progress=False)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


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
