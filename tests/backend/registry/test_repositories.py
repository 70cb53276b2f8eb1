"""Repositories (registry.repositories): create, filter, refuse bad input, list in constant queries."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from pefthub_server.registry.models import Namespace, Repository


def test_create_and_filter(alice, api, acme_base):
    client = api(alice.token)
    made = client.post(
        "/api/v1/repos",
        {"namespace": "acme", "name": "chat-lora", "kind": "adapter", "base_model": "acme/llama-tiny", "description": "chat"},
        format="json",
    )
    assert made.status_code == 201, made.content
    assert made.json() | {"created_at": None, "updated_at": None} == {
        "id": "acme/chat-lora", "namespace": "acme", "name": "chat-lora", "kind": "adapter", "visibility": "private",
        "description": "chat", "base_model": "acme/llama-tiny", "peft_type": None, "latest_version": None,
        "created_at": None, "updated_at": None,
    }
    client.post("/api/v1/repos", {"name": "notes", "kind": "dataset"}, format="json")  # alice's own namespace
    ids = lambda **q: [r["id"] for r in client.get("/api/v1/repos", q).json()["results"]]  # noqa: E731
    assert ids() == ["acme/chat-lora", "acme/llama-tiny", "alice/notes"]
    assert ids(kind="adapter") == ["acme/chat-lora"]
    assert ids(namespace="alice") == ["alice/notes"]
    assert ids(base_model="acme/llama-tiny") == ["acme/chat-lora"]
    assert ids(search="chat") == ["acme/chat-lora"]
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "chat-lora", "kind": "model"}, format="json").status_code == 409


def test_create_refuses_bad_input(alice, api, acme_base):
    client = api(alice.token)
    cases = [
        ({"name": "../x", "kind": "model"}, "validation_error"),
        ({"name": "x", "kind": "checkpoint"}, "validation_error"),
        ({"name": "x", "kind": "adapter"}, "base_model_required"),
        ({"name": "x", "kind": "adapter", "base_model": "acme/nope"}, "not_found"),
        ({"name": "x", "kind": "adapter", "base_model": "not a ref"}, "invalid_reference"),
    ]
    for body, code in cases:
        response = client.post("/api/v1/repos", body, format="json")
        assert response.status_code in (400, 404), body
        assert response.json()["error"]["code"] == code, (body, response.json())
        assert response.json()["error"]["message"]
    assert not Repository.objects.filter(name="x").exists()


def test_listing_2000_adapters_uses_constant_queries(alice, api, acme_base, django_assert_max_num_queries, settings):
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 0  # every request looks its token up: a page may take longer than the cache
    base = Repository.objects.get(name="llama-tiny")
    ns = Namespace.objects.get(name="acme")
    Repository.objects.bulk_create(
        [Repository(namespace=ns, name=f"adapter-{i:04d}", kind="adapter", base_model=base, peft_type="LORA",
                    latest_number=1) for i in range(2000)]
    )
    client = api(alice.token)
    client.get("/api/v1/whoami")  # token last-used stamp is written at most once a minute
    counts = []
    for page in (1, 7, 40):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get("/api/v1/repos", {"kind": "adapter", "page": page, "page_size": 50})
        assert response.status_code == 200 and len(response.json()["results"]) == 50
        counts.append(len(ctx))
    assert len(set(counts)) == 1
    with django_assert_max_num_queries(4):  # token, catalogue generation, count, page (namespaces and bases joined)
        body = client.get("/api/v1/repos", {"base_model": "acme/llama-tiny", "page_size": 200}).json()
    assert body["count"] == 2000 and body["results"][0]["base_model"] == "acme/llama-tiny"
