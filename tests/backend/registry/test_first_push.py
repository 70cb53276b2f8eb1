"""A push creates its repository with its first version: nothing exists until every check passed.

Negotiating a push to a repository that does not exist yet needs `kind` (what the push is)
and the `write` role in the namespace; the commit creates the repository in the transaction
that adds version 1, so a refused first push leaves no empty repository behind.
"""

from __future__ import annotations

import hashlib

import pytest

from pefthub_server.registry.models import Repository, Version
from tests.conftest import file_specs, write_json

ROWS = b'{"text": "hello"}\n{"text": "world"}\n'


def spec(path: str, data: bytes) -> dict:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def push(client, repo: str, files: dict[str, bytes], **fields):
    """Negotiate, upload what is missing, commit, each with ``fields``; the first refusal or the commit."""
    specs = [spec(path, data) for path, data in files.items()]
    by_sha = {s["sha256"]: files[s["path"]] for s in specs}
    negotiated = client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs, **fields}, format="json")
    if negotiated.status_code != 200:
        return negotiated
    for item in negotiated.json()["missing"]:
        put = client.generic("PUT", item["upload"]["url"], by_sha[item["sha256"]], content_type="application/octet-stream")
        assert put.status_code == 201, put.content
    return client.post(f"/api/v1/repos/{repo}/versions", {"files": specs, **fields}, format="json")


def test_a_first_push_creates_the_repository_with_its_first_version(alice, api):
    client = api(alice.token)
    negotiated = client.post("/api/v1/repos/acme/fresh/uploads", {"files": [spec("train.jsonl", ROWS)], "kind": "dataset"},
                             format="json")
    assert negotiated.status_code == 200 and len(negotiated.json()["missing"]) == 1
    assert not Repository.objects.filter(name="fresh").exists()  # negotiating creates nothing

    response = push(client, "acme/fresh", {"train.jsonl": ROWS}, kind="dataset", visibility="internal", description="d")

    assert response.status_code == 201, response.content
    assert (response.json()["repo"], response.json()["number"]) == ("acme/fresh", 1)
    repo = Repository.objects.get(namespace__name="acme", name="fresh")
    assert (repo.kind, repo.visibility, repo.description, repo.created_by, repo.latest_number) == (
        "dataset", "internal", "d", alice.user, 1)
    again = push(client, "acme/fresh", {"train.jsonl": ROWS + ROWS}, kind="dataset", visibility="public")
    assert again.status_code == 201 and Repository.objects.get(pk=repo.pk).visibility == "internal"  # creation only


def test_a_first_adapter_push_files_the_repository_against_its_base(alice, api, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    files = {s["path"]: (folder / s["path"]).read_bytes() for s in file_specs(folder)}
    response = push(api(alice.token), "acme/bot", files, kind="adapter", base_model="acme/llama-tiny@1")
    assert response.status_code == 201, response.content
    repo = Repository.objects.get(name="bot")
    assert (repo.kind, repo.base_model.full_name, repo.peft_type) == ("adapter", "acme/llama-tiny", "LORA")


def test_an_adapter_push_without_a_base_is_refused_before_any_byte_moves(alice, api, acme_base, tiny_adapter):
    specs = file_specs(tiny_adapter[0])
    response = api(alice.token).post("/api/v1/repos/acme/bot/uploads", {"files": specs, "kind": "adapter"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "base_model_required"
    assert not Repository.objects.filter(name="bot").exists()


PICKLE = b"\x80\x04\x95" + b"\0" * 64


@pytest.mark.parametrize("case", ["pickle_in_safetensors", "not_uploaded", "unknown_base", "bad_visibility"])
def test_a_refused_first_push_leaves_no_repository(alice, api, case):
    client = api(alice.token)
    before = (Repository.objects.count(), Version.objects.count())
    if case == "pickle_in_safetensors":  # refused by content, at commit, after the upload
        response = push(client, "acme/fresh", {"weights.safetensors": PICKLE, "train.jsonl": ROWS}, kind="dataset")
        code = "pickle_refused"
    elif case == "not_uploaded":
        response = client.post("/api/v1/repos/acme/fresh/versions", {"files": [spec("train.jsonl", ROWS)], "kind": "dataset"},
                               format="json")
        code = "missing_blob"
    elif case == "unknown_base":
        response = push(client, "acme/fresh", {"train.jsonl": ROWS}, kind="adapter", base_model="acme/nothing")
        code = "not_found"
    else:
        response = push(client, "acme/fresh", {"train.jsonl": ROWS}, kind="dataset", visibility="secret")
        code = "validation_error"
    assert response.json()["error"]["code"] == code, response.content
    assert (Repository.objects.count(), Version.objects.count()) == before


def test_a_refused_first_adapter_push_leaves_no_repository(alice, api, acme_base, tiny_adapter, tmp_path):
    import json
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(tiny_adapter[0], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    write_json(folder / "adapter_config.json", {**config, "target_modules": ["q_proj", "qkv_fused"]})
    files = {s["path"]: (folder / s["path"]).read_bytes() for s in file_specs(folder)}
    response = push(api(alice.token), "acme/bot", files, kind="adapter", base_model="acme/llama-tiny")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_module"
    assert not Repository.objects.filter(name="bot").exists()


def test_pushing_to_a_namespace_you_cannot_write_leaks_nothing(alice, bob, carol, api, db):
    from tests.conftest import _person

    assert push(api(alice.token), "acme/private-one", {"train.jsonl": ROWS}, kind="dataset").status_code == 201
    body = {"files": [spec("train.jsonl", ROWS)], "kind": "dataset"}
    carol_client = api(carol.token)
    # carol: an existing private repository, a missing one, an unknown namespace: the same 404.
    answers = {repo: carol_client.post(f"/api/v1/repos/{repo}/uploads", body, format="json")
               for repo in ("acme/private-one", "acme/fresh", "ghost/fresh")}
    assert {a.status_code for a in answers.values()} == {404}
    messages = {a.json()["error"]["message"].replace(repo, "<repo>") for repo, a in answers.items()}
    assert len(messages) == 1, messages
    # A read member and a read-scope token may see the namespace, not push to it.
    dave = _person("dave", team="acme", role="read")
    assert api(dave.token).post("/api/v1/repos/acme/fresh/uploads", body, format="json").status_code == 403
    assert api(alice.new_token("read")).post("/api/v1/repos/acme/fresh/uploads", body, format="json").status_code == 403
    assert api().post("/api/v1/repos/acme/fresh/uploads", body, format="json").status_code == 404
    assert not Repository.objects.filter(name="fresh").exists()


def test_without_kind_a_push_to_a_missing_repository_is_not_found(alice, api):
    client = api(alice.token)
    for route in ("uploads", "versions"):
        response = client.post(f"/api/v1/repos/acme/fresh/{route}", {"files": [spec("train.jsonl", ROWS)]}, format="json")
        assert response.status_code == 404, route


def test_a_push_of_another_kind_than_the_repository_is_refused(alice, api):
    client = api(alice.token)
    assert push(client, "acme/data", {"train.jsonl": ROWS}, kind="dataset").status_code == 201
    response = push(client, "acme/data", {"train.jsonl": ROWS + ROWS}, kind="model")
    assert response.status_code == 400 and response.json()["error"]["code"] == "kind_mismatch"
    assert "acme/data` is a dataset" in response.json()["error"]["message"]
