"""Refs, commits, whoami-v2, paths-info and `files_metadata` through /hf, as huggingface_hub sends them."""

from __future__ import annotations

import hashlib

import pytest

from pefthub_server.registry.models import Alias, Version, VersionFile
from tests.conftest import worker_token

pytestmark = pytest.mark.django_db


def commit_of(repo: str, number: int) -> str:
    ns, name = repo.split("/")
    return Version.objects.get(repository__namespace__name=ns, repository__name=name, number=number).digest[:40]


def test_refs_list_main_branches_and_tags(catalogue, api, alice, carol):
    Alias.objects.filter(repository__name="bot", name="staging").update(ref=Alias.Ref.BRANCH)
    refs = api(alice.token).get("/hf/api/models/acme/bot/refs").json()
    assert refs == {
        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": commit_of("acme/bot", 2)},
                     {"name": "staging", "ref": "refs/heads/staging", "targetCommit": commit_of("acme/bot", 2)}],
        "converts": [],
        "tags": [{"name": "prod", "ref": "refs/tags/prod", "targetCommit": commit_of("acme/bot", 1)}],
    }
    assert api(alice.token).get("/hf/api/models/acme/bot/refs", {"include_prs": 1}).json()["pullRequests"] == []
    assert api(alice.token).get("/hf/api/models/acme/empty/refs").json()["branches"] == []
    for url in ("/hf/api/models/acme/secret/refs", "/hf/api/models/acme/nope/refs", "/hf/api/datasets/acme/bot/refs"):
        response = api(carol.token).get(url)
        assert response.status_code == 404 and response.headers["X-Error-Code"] == "RepoNotFound", url


def test_commits_newest_first_from_a_revision_with_pages(catalogue, api, alice, carol, monkeypatch):
    client = api(alice.token)
    expected = [
        {"id": commit_of("acme/bot", 2), "title": "Add a README", "message": "", "authors": [{"user": "alice"}]},
        {"id": commit_of("acme/bot", 1), "title": "First cut", "message": "Trained 5 steps.", "authors": [{"user": "alice"}]},
    ]
    got = client.get("/hf/api/models/acme/bot/commits/main").json()
    assert [{k: c[k] for k in ("id", "title", "message", "authors")} for c in got] == expected
    assert all(c["date"].endswith("Z") for c in got)
    for rev in ("prod", "1", commit_of("acme/bot", 1)):
        assert [c["id"] for c in client.get(f"/hf/api/models/acme/bot/commits/{rev}").json()] == [expected[1]["id"]]
    monkeypatch.setattr("pefthub_server.hf.history.COMMITS_PAGE", 1)
    first = client.get("/hf/api/models/acme/bot/commits/main")
    link = first.headers["Link"]
    second = client.get(link[1 : link.index(">")].removeprefix("http://testserver"))
    assert [c["id"] for c in first.json() + second.json()] == [e["id"] for e in expected] and "Link" not in second.headers
    missing = client.get("/hf/api/models/acme/bot/commits/nope")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RevisionNotFound"
    assert api(carol.token).get("/hf/api/models/acme/secret/commits/main").headers["X-Error-Code"] == "RepoNotFound"


def test_whoami_names_the_user_their_teams_and_the_token_scope(catalogue, api, alice, carol):
    me = api(alice.token).get("/hf/api/whoami-v2").json()
    assert me["name"] == "alice" and me["type"] == "user"
    assert [(o["name"], o["roleInOrg"]) for o in me["orgs"]] == [("acme", "admin")]
    assert me["auth"]["accessToken"]["role"] == "write"
    assert api(alice.new_token("read")).get("/hf/api/whoami-v2").json()["auth"]["accessToken"]["role"] == "read"
    assert api(carol.token).get("/hf/api/whoami-v2").json()["orgs"] == []
    anonymous = api().get("/hf/api/whoami-v2")
    assert anonymous.status_code == 401 and "HF_TOKEN" in anonymous.json()["error"]
    assert api("phub_nope").get("/hf/api/whoami-v2").status_code == 401
    assert api(worker_token()).get("/hf/api/whoami-v2").status_code == 403  # as /api/v1/whoami


def test_files_metadata_gives_sizes_blob_ids_and_sha256(catalogue, api, alice, tiny_adapter):
    folder = tiny_adapter[0]
    info = api(alice.token).get("/hf/api/models/acme/bot/revision/1", {"blobs": "true"}).json()
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    stored = VersionFile.objects.filter(version__repository__name="bot", version__number=1).exclude(path="README.md")
    assert {f.path for f in stored} | {"README.md"} == set(siblings)  # peft's own README.md, merged into the card
    for file in stored:  # the config as the hub stored it (its base named as the hub repo), the weights as pushed
        assert siblings[file.path]["size"] == file.size and siblings[file.path]["blobId"] == file.blob_id[:40]
    weights = siblings["adapter_model.safetensors"]["lfs"]
    assert weights == {"sha256": hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest(),
                       "size": (folder / "adapter_model.safetensors").stat().st_size, "pointerSize": 134}
    card = api(alice.token).get("/hf/acme/bot/resolve/1/README.md")
    assert siblings["README.md"]["size"] == len(card.content) and "lfs" not in siblings["README.md"]


def test_paths_info_answers_the_paths_that_exist(catalogue, api, alice, carol, tiny_adapter):
    client = api(alice.token)
    url = "/hf/api/models/acme/bot/paths-info/main"
    found = client.post(url, {"paths": ["adapter_config.json", "nope.bin", "README.md", "adapter_config.json"],
                              "expand": "False"}).json()
    assert [(f["type"], f["path"]) for f in found] == [("file", "adapter_config.json"), ("file", "README.md")]
    assert found[0]["size"] == VersionFile.objects.get(version__repository__name="bot", version__number=2,
                                                       path="adapter_config.json").size
    assert client.post(url, {"paths": []}).json() == []
    assert client.post("/hf/api/datasets/acme/data/paths-info/main", {"paths": ["train.jsonl"]}).json()[0]["path"] == "train.jsonl"
    too_many = client.post(url, {"paths": [f"f{i}" for i in range(1001)]})
    assert too_many.status_code == 400 and "1000" in too_many.json()["error"]
    assert api(carol.token).post("/hf/api/models/acme/secret/paths-info/main", {"paths": ["README.md"]}) \
        .headers["X-Error-Code"] == "RepoNotFound"
    assert client.get(url).status_code == 405
