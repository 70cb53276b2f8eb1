"""What a push of bytes the hub holds costs in queries: its negotiation and its commit, into a new repository
and into an existing one (exact counts, so a regression shows), and that the cheaper paths keep every answer."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pefthub_server.core import auth
from pefthub_server.registry.models import Repository, Version
from tests.conftest import api_push, file_specs


@pytest.fixture(autouse=True)
def _token_kept(settings, monkeypatch) -> None:
    # however slow this machine, the counted requests find their token kept, its last use stamped recently enough
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 3600
    monkeypatch.setattr(auth, "_LAST_USED_RESOLUTION", timedelta(days=1))


@pytest.fixture
def held(alice, api, tiny_adapter, acme_base):
    """alice's client and an adapter folder whose bytes she pushed already (and the hub read): (client, specs)."""
    client = api(alice.token)
    folder = tiny_adapter[0]
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "first", "kind": "adapter",
                                         "base_model": "acme/llama-tiny"}, format="json").status_code == 201
    assert api_push(client, "acme/first", folder).status_code == 201
    return client, file_specs(folder)


def _detail(client, path: str) -> dict:
    """A version as GET answers it, as a commit's answer shows it (created, no evaluations)."""
    body = client.get(path).json()
    assert body.pop("evaluations") == []
    return body | {"created": True}


def _push(client, repo, specs, num_queries, negotiate: int, commit: int, **fields):
    client.get("/api/v1/whoami")  # the token is known now (cached) and its last use stamped: no write while counted
    with num_queries(negotiate):
        negotiated = client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs, **fields}, format="json")
    assert negotiated.status_code == 200, negotiated.content
    assert negotiated.json()["missing"] == []
    with num_queries(commit):
        committed = client.post(f"/api/v1/repos/{repo}/versions", {"files": specs, **fields}, format="json")
    return committed


def _push_at_once(client, repo, specs, num_queries, queries: int, commit: dict, **fields):
    """One request: a negotiation that carries the commit, for bytes the pusher holds."""
    client.get("/api/v1/whoami")
    with num_queries(queries):
        return client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs, **fields, "commit": commit},
                           format="json")


def test_a_push_into_a_new_repository_is_3_and_12_queries(held, django_assert_num_queries):
    client, specs = held
    # negotiate: the namespace with the pusher's role and the name in any case, the base's newest version,
    # possession. commit: those 3, what reading the blobs found, whether the rewritten config is stored; BEGIN,
    # SAVEPOINT, the repository, RELEASE, the version, its files, COMMIT (here in the test's transaction:
    # savepoints). The answer reads nothing back. Before: 4 and 15 (7 and 22 before that).
    committed = _push(client, "acme/second", specs, django_assert_num_queries, 3, 12, kind="adapter",
                      base_model="acme/llama-tiny")
    assert committed.status_code == 201, committed.content
    body = committed.json()
    assert body["repo"] == "acme/second" and body["number"] == 1 and body["aliases"] == ["latest"]
    assert body["base_model"]["repo"] == "acme/llama-tiny"
    repo = Repository.objects.get(name="second")
    assert (repo.kind, repo.latest_number, repo.peft_type, repo.base_model.full_name) == (
        "adapter", 1, "LORA", "acme/llama-tiny")
    assert body == _detail(client, "/api/v1/repos/acme/second/versions/1")


def test_a_push_into_an_existing_repository_is_4_and_17_queries(held, django_assert_num_queries):
    client, specs = held
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "empty", "kind": "adapter",
                                         "base_model": "acme/llama-tiny"}, format="json").status_code == 201
    # negotiate: the namespace (role, name), the repository, the base, possession. commit: those 4, the 2 reads of
    # the blobs, BEGIN, the row lock, the newest version, the version, its files, the repository's update, the
    # alias's lookup, its move and the alias (3), COMMIT. Before: 4 and 18.
    committed = _push(client, "acme/empty", specs, django_assert_num_queries, 4, 17, aliases=["prod", "prod"])
    assert committed.status_code == 201, committed.content
    assert committed.json()["aliases"] == ["latest", "prod"]
    assert committed.json() == _detail(client, "/api/v1/repos/acme/empty/versions/1")
    repo = Repository.objects.get(name="empty")
    assert (repo.latest_number, repo.peft_type) == (1, "LORA")
    assert Version.objects.get(repository=repo).base_version.repository.name == "llama-tiny"


def test_a_push_of_held_bytes_into_a_new_repository_is_one_request_of_12_queries(held, django_assert_num_queries):
    client, specs = held
    # the negotiation's 3, then the commit's own 9 on what they found (the 2 reads of the blobs, BEGIN … COMMIT):
    # the two requests' 15 less the commit's second look at the namespace, the base and possession
    response = _push_at_once(client, "acme/second", specs, django_assert_num_queries, 12,
                             {"message": "at once", "metadata": {"k": 1}}, kind="adapter", base_model="acme/llama-tiny")
    assert response.status_code == 201, response.content
    body = response.json()
    version = body.pop("version")
    assert body == {"missing": [], "present": sorted({s["sha256"] for s in specs})}
    assert (version["repo"], version["number"], version["created"], version["message"], version["metadata"]) == (
        "acme/second", 1, True, "at once", {"k": 1})
    assert version == _detail(client, "/api/v1/repos/acme/second/versions/1")
    repo = Repository.objects.get(name="second")
    assert (repo.kind, repo.latest_number, repo.peft_type, repo.base_model.full_name, repo.visibility) == (
        "adapter", 1, "LORA", "acme/llama-tiny", "private")
    # the stored config names the base by its hub reference, as a commit's does
    first = client.get("/api/v1/repos/acme/first/versions/1").json()["files"]
    assert [f["sha256"] for f in version["files"]] == [f["sha256"] for f in first]


def test_a_push_of_held_bytes_into_an_existing_repository_is_one_request_of_15_queries(held,
                                                                                     django_assert_num_queries):
    client, specs = held
    # the negotiation's 4, then the commit's 11: the 2 reads of the blobs, BEGIN, the lock, the newest version (with
    # what the answer shows of it), the alias's lookup, its move and the alias, COMMIT, the answer's aliases and files
    response = _push_at_once(client, "acme/first", specs, django_assert_num_queries, 15, {"aliases": ["prod"]},
                             kind="adapter")
    assert response.status_code == 200, response.content  # the files are the latest version's: nothing new
    version = response.json()["version"]
    assert (version["number"], version["created"], version["aliases"]) == (1, False, ["latest", "prod"])
    assert Version.objects.filter(repository__name="first").count() == 1


def test_a_name_taken_in_another_case_is_still_a_409_naming_it(held):
    client, specs = held
    response = client.post("/api/v1/repos/acme/FIRST/uploads", {"files": specs, "kind": "adapter",
                                                                "base_model": "acme/llama-tiny"}, format="json")
    assert response.status_code == 409
    assert "acme/first" in response.json()["error"]["message"]
    response = client.post("/api/v1/repos/acme/FIRST/uploads", {"files": specs}, format="json")
    assert response.status_code == 404


def test_a_base_named_at_a_revision_or_not_a_model_resolves_as_before(held, alice):
    client, specs = held
    ok = client.post("/api/v1/repos/acme/third/uploads", {"files": specs, "kind": "adapter",
                                                         "base_model": "acme/llama-tiny@1"}, format="json")
    assert ok.status_code == 200, ok.content
    bad = client.post("/api/v1/repos/acme/third/uploads", {"files": specs, "kind": "adapter",
                                                          "base_model": "acme/first"}, format="json")
    assert bad.status_code == 400 and "not a model" in bad.json()["error"]["message"]
    gone = client.post("/api/v1/repos/acme/third/uploads", {"files": specs, "kind": "adapter",
                                                           "base_model": "acme/nothing"}, format="json")
    assert gone.status_code == 404
