from __future__ import annotations

import pytest

from tests.conftest import api_push


@pytest.fixture
def catalogue(alice, api, acme_base, tiny_adapter):
    """A public adapter `acme/bot@1` (alias prod) on alice's private base, and a second token of hers."""
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny",
                                  "visibility": "public"}, format="json")
    assert api_push(client, "acme/bot", tiny_adapter[0], aliases=["prod"]).status_code == 201
    client.post("/api/v1/tokens", {"name": "ci"}, format="json")
