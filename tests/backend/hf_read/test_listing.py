"""GET /hf/api/models and /hf/api/datasets: what `list_models` / `list_datasets` send, answered from the database."""

from __future__ import annotations

import base64

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.backend.hf_read.conftest import create

pytestmark = pytest.mark.django_db


def ids(client, url: str, **params) -> list[str]:
    """Every id the listing gives, following `Link: <...>; rel="next"` as huggingface_hub's paginate does."""
    found, pages = [], 0
    response = client.get(url, params)
    while True:
        assert response.status_code == 200, response.content
        found += [item["id"] for item in response.json()]
        pages += 1
        link = response.headers.get("Link")
        if not link:
            return found
        assert link.endswith('>; rel="next"') and pages < 50
        response = client.get(link[1 : link.index(">")].removeprefix("http://testserver"))


def test_each_caller_lists_exactly_what_they_can_read(catalogue, api, alice, bob, carol):
    acme_models = ["acme/bot", "acme/empty", "acme/llama-tiny", "acme/secret"]
    assert ids(api(alice.token), "/hf/api/models") == acme_models
    assert ids(api(bob.token), "/hf/api/models") == acme_models
    assert ids(api(carol.token), "/hf/api/models") == ["acme/bot", "carol/base", "carol/mine"]
    assert ids(api(), "/hf/api/models") == ["acme/bot"]
    assert ids(api(alice.token), "/hf/api/datasets") == ["acme/data"]
    assert ids(api(carol.token), "/hf/api/datasets") == []


def test_search_author_and_filters(catalogue, api, alice, carol):
    client = api(alice.token)
    assert ids(client, "/hf/api/models", search="ACME/B") == ["acme/bot"]
    assert ids(client, "/hf/api/models", search="e") == ["acme/bot", "acme/empty", "acme/llama-tiny", "acme/secret"]
    assert ids(client, "/hf/api/models", search="secret", author="acme") == ["acme/secret"]
    assert ids(client, "/hf/api/models", author="carol") == []  # carol's own are private to her
    assert ids(api(carol.token), "/hf/api/models", author="acme") == ["acme/bot"]
    base = "base_model:adapter:acme/llama-tiny"
    assert ids(client, "/hf/api/models", filter=base) == ["acme/bot", "acme/empty", "acme/secret"]
    assert ids(api(carol.token), "/hf/api/models", filter=base) == ["acme/bot"]
    assert ids(api(carol.token), "/hf/api/models", filter="base_model:carol/base") == ["carol/mine"]
    assert ids(client, "/hf/api/models", filter=["peft", "lora"]) == ["acme/bot", "acme/secret"]  # empty has no type
    assert ids(client, "/hf/api/models", filter="transformers") == ["acme/llama-tiny"]
    assert ids(client, "/hf/api/models", filter="base_model:merge:acme/llama-tiny") == []
    assert ids(client, "/hf/api/datasets", filter="pefthub", search="data") == ["acme/data"]


def test_items_carry_what_model_info_says(catalogue, api, alice):
    client = api(alice.token)
    listed = {item["id"]: item for item in client.get("/hf/api/models", {"full": "true"}).json()}
    info = client.get("/hf/api/models/acme/bot").json()
    bot = listed["acme/bot"]
    for key in ("sha", "lastModified", "createdAt", "private", "library_name", "author", "_id"):
        assert bot[key] == info[key], key
    assert {"pefthub", "peft", "lora", "base_model:acme/llama-tiny", "base_model:adapter:acme/llama-tiny"} <= set(bot["tags"])
    assert [s["rfilename"] for s in bot["siblings"]] == [s["rfilename"] for s in info["siblings"]]
    empty = listed["acme/empty"]
    assert empty["sha"] is None and empty["siblings"] == [] and "base_model:adapter:acme/llama-tiny" in empty["tags"]


def test_sort_direction_and_pages(catalogue, api, alice):
    client = api(alice.token)
    by_id = ["acme/bot", "acme/empty", "acme/llama-tiny", "acme/secret"]
    assert ids(client, "/hf/api/models", limit=1) == by_id
    assert ids(client, "/hf/api/models", sort="id", limit=3) == by_id[::-1]  # descending unless direction=1
    assert ids(client, "/hf/api/models", sort="id", direction="1", limit=3) == by_id
    newest_first = ids(client, "/hf/api/models", sort="lastModified")
    assert newest_first[0] == "acme/empty" and newest_first.index("acme/bot") < newest_first.index("acme/llama-tiny")
    assert ids(client, "/hf/api/models", sort="createdAt", direction="1", limit=2) == \
        ["acme/llama-tiny", "acme/bot", "acme/secret", "acme/empty"]
    for sort in ("downloads", "likes", "trendingScore"):  # no counts kept: every repository ties, by id
        assert ids(client, "/hf/api/models", sort=sort, limit=2) == by_id[::-1], sort
    for params, named in (({"sort": "stars"}, "lastModified"), ({"direction": "up"}, "-1"), ({"limit": "0"}, "1000"),
                          ({"filter": "gguf"}, "base_model:adapter:<ns>/<name>"), ({"filter": "base_model:quantized:a/b"}, "lora"),
                          ({"search": "x" * 201}, "200"), ({"cursor": "!!"}, "cursor")):
        response = client.get("/hf/api/models", params)
        assert response.status_code == 400 and named in response.json()["error"], params
    past = base64.urlsafe_b64encode(b"9" * 40).decode()  # an offset past any 64-bit integer: an empty page
    assert client.get("/hf/api/models", {"cursor": past}).json() == []
    assert client.get("/hf/api/models/acme/bot/commits/main", {"cursor": past}).status_code == 200


def test_a_page_costs_the_same_queries_however_many_repositories(catalogue, api, alice):
    client = api(alice.token)

    def queries(**params) -> int:
        client.get("/hf/api/models", {"full": "true", "filter": "peft", "sort": "lastModified", **params})  # warm
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/hf/api/models", {"full": "true", "filter": "peft", "sort": "lastModified", **params}) \
                .status_code == 200
        return len(captured)

    few = queries()
    for i in range(12):
        create(catalogue, "acme", f"more-{i}", "adapter", base_model="acme/llama-tiny")
    assert queries() == few
    assert queries(limit=5) <= few  # a page of repositories with no version skips the files query
