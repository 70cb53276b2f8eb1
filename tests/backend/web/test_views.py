"""The server-rendered catalogue shows each visitor exactly what they may read."""

from __future__ import annotations


def test_catalogue_shows_only_what_the_visitor_may_read(client, catalogue):
    page = client.get("/").content.decode()
    assert "<strong>acme/bot</strong>" in page and "<strong>acme/llama-tiny</strong>" not in page  # the base is private
    filtered = client.get("/", {"kind": "model"}).content.decode()
    assert "acme/bot" not in filtered
