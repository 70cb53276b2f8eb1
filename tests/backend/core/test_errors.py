"""One error shape (core.errors): unknown API URLs and malformed JSON."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("url", ["/api/v1/nope", "/api/nothing/here", "/api/v1/repos/a/b/c/d"])
def test_unknown_api_urls_use_the_error_shape(api, db, url):
    response = api().get(url)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_malformed_json_is_a_400(alice, api):
    response = api(alice.token).generic("POST", "/api/v1/repos", b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
