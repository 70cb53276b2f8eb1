"""End-to-end fixtures: a live hub server (real HTTP, threaded) and SDK clients per person."""

from __future__ import annotations

import pytest
import requests


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
