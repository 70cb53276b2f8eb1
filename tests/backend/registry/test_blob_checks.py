"""A commit reads a blob's content once, ever: what checking it found is kept by its sha256 (registry.BlobCheck),
and the adapter config the hub rewrites is stored once. Counted as the requests the store's own S3 client sends
to moto's server."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import requests

from pefthub_server.registry.models import Blob, BlobCheck, Version
from pefthub_server.registry.storage import get_blob_store
from tests.conftest import file_specs


@pytest.fixture
def s3_calls(s3_storage):
    """The S3 operations the hub's store sends from now on, by name."""
    calls: list[str] = []
    get_blob_store().client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def push(client, repo: str, folder, **fields):
    """Negotiate (creating the repository), upload what is missing straight to S3, commit: the commit's answer."""
    specs = file_specs(folder)
    negotiated = client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs, **fields}, format="json")
    assert negotiated.status_code == 200, negotiated.content
    by_sha = {s["sha256"]: folder / s["path"] for s in specs}
    for item in negotiated.json()["missing"]:
        upload = item["upload"]
        sent = requests.put(upload["url"], data=by_sha[item["sha256"]].read_bytes(), headers=upload["headers"], timeout=10)
        assert sent.status_code == 200, sent.text
    return client.post(f"/api/v1/repos/{repo}/versions", {"files": specs, **fields}, format="json")


@pytest.fixture
def hub(s3_calls, alice, api, tiny_base, tiny_adapter):
    """alice's client, `acme/llama-tiny` pushed and `acme/bot-1` committed from the tiny adapter's bytes."""
    client = api(alice.token)
    assert push(client, "acme/llama-tiny", tiny_base, kind="model").status_code == 201
    first = push(client, "acme/bot-1", tiny_adapter[0], kind="adapter", base_model="acme/llama-tiny")
    assert first.status_code == 201, first.content
    return client, first.json()


def test_a_second_commit_of_the_same_bytes_sends_s3_nothing(s3_calls, hub, tiny_adapter):
    client, first = hub
    assert "GetObject" in s3_calls and "PutObject" in s3_calls  # the first commit read the files, stored the rewrite
    s3_calls.clear()
    second = push(client, "acme/bot-2", tiny_adapter[0], kind="adapter", base_model="acme/llama-tiny")
    assert second.status_code == 201, second.content
    assert s3_calls == []  # no read, no HEAD, no rewrite stored again: a presigned URL is no request
    second = second.json()
    for key in ("digest", "adapter", "serving", "base_model", "size", "file_count"):
        assert second[key] == first[key], key
    assert [(f["path"], f["sha256"]) for f in second["files"]] == [(f["path"], f["sha256"]) for f in first["files"]]
    [config] = [f for f in second["files"] if f["path"] == "adapter_config.json"]
    stored = requests.get(config["url"], timeout=10).content
    assert hashlib.sha256(stored).hexdigest() == config["sha256"]
    assert json.loads(stored)["base_model_name_or_path"] == "acme/llama-tiny"
    original = json.loads((tiny_adapter[0] / "adapter_config.json").read_bytes())
    assert json.loads(stored) == {**original, "base_model_name_or_path": "acme/llama-tiny"}
    assert Version.objects.get(repository__name="bot-2").fingerprint is None


def test_what_each_file_was_checked_as_is_kept_by_its_blob(hub, tiny_base, tiny_adapter):
    by_path = {f["path"]: f["sha256"] for f in file_specs(tiny_adapter[0]) + file_specs(tiny_base)}
    kinds = {(by_path[p], k) for p, k in [("adapter_model.safetensors", "safetensors"), ("adapter_config.json", "config"),
                                           ("model.safetensors", "safetensors"), ("config.json", "config")]}
    checks = {(c.blob_id, c.kind): json.loads(c.result) for c in BlobCheck.objects.all()}
    assert kinds <= set(checks)
    assert checks[(by_path["config.json"], "config")] == json.loads((tiny_base / "config.json").read_bytes())
    tensors = checks[(by_path["adapter_model.safetensors"], "safetensors")]
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == {"dtype": "F32", "shape": [8, 64]}
    # The base's fingerprint is computed from what was kept: the same as a fresh read gave.
    assert Version.objects.get(repository__name="llama-tiny").fingerprint["modules"]["model.layers.0.self_attn.q_proj"] == [64, 64]


def test_a_refused_file_leaves_no_check_behind(s3_calls, hub, tiny_adapter, tmp_path):
    client, _ = hub
    folder = tmp_path / "bad"
    shutil.copytree(tiny_adapter[0], folder)
    (folder / "adapter_model.safetensors").write_bytes(b"\x80\x04" + b"\0" * 64)  # pickle under a safetensors name
    before = BlobCheck.objects.count()
    refused = push(client, "acme/bot-bad", folder, kind="adapter", base_model="acme/llama-tiny")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "pickle_refused", refused.content
    assert BlobCheck.objects.count() == before
    sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert Blob.objects.filter(sha256=sha).exists()  # uploaded and verified, but its content was refused, not kept
    s3_calls.clear()
    again = push(client, "acme/bot-bad", folder, kind="adapter", base_model="acme/llama-tiny")
    assert again.status_code == 400 and "GetObject" in s3_calls  # checked again, refused again
