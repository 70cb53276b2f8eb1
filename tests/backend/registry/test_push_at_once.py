"""A negotiation that carries the commit (`"commit": {...}` on POST …/uploads): with every blob possessed it commits
at once, with the commit's checks and answers; with any blob missing it commits nothing and answers as a
negotiation; refused, it leaves nothing behind."""

from __future__ import annotations

import pytest

from pefthub_server.registry.models import AliasMove, Membership, Repository, Version
from tests.conftest import api_push, file_specs


@pytest.fixture
def held(alice, api, tiny_adapter, acme_base):
    """alice's client and an adapter folder whose bytes she pushed already, as `acme/first`: (client, folder)."""
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "first", "kind": "adapter",
                                         "base_model": "acme/llama-tiny"}, format="json").status_code == 201
    assert api_push(client, "acme/first", tiny_adapter[0]).status_code == 201
    return client, tiny_adapter[0]


def _at_once(client, repo: str, folder, commit: dict, **fields):
    return client.post(f"/api/v1/repos/{repo}/uploads", {"files": file_specs(folder), **fields, "commit": commit},
                       format="json")


def test_held_bytes_commit_at_once_with_the_commits_fields(held, alice):
    client, folder = held
    response = _at_once(client, "acme/second", folder, {"message": "hello", "metadata": {"lr": 0.001},
                                                        "aliases": ["prod", "staging"]},
                        kind="adapter", base_model="acme/llama-tiny", visibility="internal", description="bot")
    assert response.status_code == 201, response.content
    version = response.json()["version"]
    assert (version["created"], version["number"], version["message"], version["metadata"], version["aliases"],
            version["created_by"]) == (True, 1, "hello", {"lr": 0.001}, ["latest", "prod", "staging"], "alice")
    repo = Repository.objects.get(name="second")
    assert (repo.visibility, repo.description, repo.base_model.full_name) == ("internal", "bot", "acme/llama-tiny")
    assert sorted(AliasMove.objects.filter(repository=repo).values_list("alias", "from_number", "to_number")) == [
        ("prod", None, 1), ("staging", None, 1)]
    # the same files again: nothing new, the latest version answered with 200
    again = _at_once(client, "acme/second", folder, {}, kind="adapter")
    assert again.status_code == 200 and again.json()["version"]["created"] is False
    assert again.json()["version"] | {"created": True} == version | {"message": "hello"}
    assert Version.objects.filter(repository=repo).count() == 1


def test_missing_blobs_commit_nothing_and_answer_as_a_negotiation(alice, api, acme_base, tiny_adapter):
    client = api(alice.token)
    folder = tiny_adapter[0]
    response = _at_once(client, "acme/new", folder, {"message": "m"}, kind="adapter", base_model="acme/llama-tiny")
    assert response.status_code == 200, response.content
    body = response.json()
    assert "version" not in body and body["present"] == []
    assert sorted(m["sha256"] for m in body["missing"]) == sorted({s["sha256"] for s in file_specs(folder)})
    assert not Repository.objects.filter(name="new").exists()


def test_knowing_the_hashes_is_not_holding_the_bytes(held, carol, api):
    _, folder = held
    response = _at_once(api(carol.token), "carol/copy", folder, {}, kind="adapter", base_model="acme/llama-tiny")
    assert response.status_code == 404  # the base is alice's, private: not found for carol, before any blob
    response = _at_once(api(carol.token), "carol/copy", folder, {}, kind="dataset")
    assert response.status_code == 200 and "version" not in response.json()
    assert response.json()["present"] == [] and len(response.json()["missing"]) == len(file_specs(folder))
    assert not Repository.objects.filter(name="copy").exists()


@pytest.mark.parametrize(("commit", "words"), [
    ({"aliases": ["latest"]}, "`latest` always names the newest version"),
    ({"aliases": ["no way"]}, "alias"),
    ({"metadata": "not an object"}, "metadata"),
])
def test_bad_commit_fields_are_refused_before_anything(held, commit, words):
    client, folder = held
    response = _at_once(client, "acme/second", folder, commit, kind="adapter", base_model="acme/llama-tiny")
    assert response.status_code == 400, response.content
    assert words in str(response.json()["error"])
    assert not Repository.objects.filter(name="second").exists()


def test_a_commit_the_checks_refuse_leaves_nothing(held):
    client, folder = held
    # the adapter's bytes pushed as a model: no config.json, no model; refused by the commit's reading of the files
    response = _at_once(client, "acme/second", folder, {}, kind="model")
    assert response.status_code == 400, response.content
    assert "A model version needs `config.json`" in response.json()["error"]["message"]
    assert not Repository.objects.filter(name="second").exists()


def test_outsiders_and_readers_get_what_a_negotiation_gets(held, api, carol, bob):
    _, folder = held
    assert _at_once(api(carol.token), "acme/first", folder, {}).status_code == 404
    assert _at_once(api(), "acme/first", folder, {}).status_code in (401, 404)
    Membership.objects.filter(user=bob.user, namespace__name="acme").update(role="read")
    response = _at_once(api(bob.token), "acme/first", folder, {})
    assert response.status_code == 403 and "`write` role" in response.json()["error"]["message"]
    assert Version.objects.filter(repository__name="first").count() == 1
