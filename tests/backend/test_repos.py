"""Repositories: create, list with filters and pagination, detail; teams; the error shape."""

from __future__ import annotations

import pytest
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


def test_listing_2000_adapters_uses_constant_queries(alice, api, acme_base, django_assert_max_num_queries):
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
    with django_assert_max_num_queries(3):  # token, count, page (namespaces and bases joined)
        body = client.get("/api/v1/repos", {"base_model": "acme/llama-tiny", "page_size": 200}).json()
    assert body["count"] == 2000 and body["results"][0]["base_model"] == "acme/llama-tiny"


def test_teams_and_members(alice, bob, carol, api):
    client = api(alice.token)
    assert client.get("/api/v1/teams").json() == [{"name": "acme", "role": "admin", "member_count": 2}]
    assert client.post("/api/v1/teams/acme/members", {"username": "carol", "role": "read"}, format="json").status_code == 201
    assert api(carol.token).get("/api/v1/teams/acme").json()["role"] == "read"
    assert api(bob.token).post("/api/v1/teams/acme/members", {"username": "x"}, format="json").status_code == 403
    assert client.patch("/api/v1/teams/acme/members/carol", {"role": "write"}, format="json").json()["role"] == "write"
    assert client.delete("/api/v1/teams/acme/members/carol").status_code == 204
    assert api(carol.token).get("/api/v1/teams/acme").status_code == 404
    # the last admin cannot leave
    response = client.delete("/api/v1/teams/acme/members/alice")
    assert response.status_code == 400 and "last admin" in response.json()["error"]["message"]
    made = api(carol.token).post("/api/v1/teams", {"name": "carolco"}, format="json")
    assert made.status_code == 201 and api(carol.token).get("/api/v1/teams").json()[0]["name"] == "carolco"
    assert api(carol.token).post("/api/v1/teams", {"name": "acme"}, format="json").status_code == 409


@pytest.mark.parametrize("url", ["/api/v1/nope", "/api/nothing/here", "/api/v1/repos/a/b/c/d"])
def test_unknown_api_urls_use_the_error_shape(api, db, url):
    response = api().get(url)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_root_and_whoami(alice, api):
    assert "repos" in api().get("/api/v1/").json()["links"]
    me = api(alice.token).get("/api/v1/whoami").json()
    assert me["username"] == "alice" and me["teams"] == [{"name": "acme", "role": "admin"}]
    assert me["token"]["scope"] == "write"
    assert api().get("/api/v1/whoami").status_code == 401


def test_malformed_json_is_a_400(alice, api):
    response = api(alice.token).generic("POST", "/api/v1/repos", b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
