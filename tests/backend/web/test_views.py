"""The server-rendered catalogue shows each visitor exactly what they may read."""

from __future__ import annotations

import pytest

from tests.conftest import api_push


@pytest.fixture
def catalogue(alice, api, acme_base, tiny_adapter):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny",
                                  "visibility": "public"}, format="json")
    assert api_push(client, "acme/bot", tiny_adapter[0], aliases=["prod"]).status_code == 201
    client.post("/api/v1/tokens", {"name": "ci"}, format="json")


def test_catalogue_shows_only_what_the_visitor_may_read(client, catalogue):
    page = client.get("/").content.decode()
    assert "<strong>acme/bot</strong>" in page and "<strong>acme/llama-tiny</strong>" not in page  # the base is private
    filtered = client.get("/", {"kind": "model"}).content.decode()
    assert "acme/bot" not in filtered
