"""Push through the API: negotiate, upload, commit; every refusal leaves no version behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest

from pefthub_server.registry.models import Blob, Version
from tests.conftest import api_push, file_specs


@pytest.fixture
def adapter_repo(alice, api, acme_base):
    client = api(alice.token)
    response = client.post(
        "/api/v1/repos",
        {"namespace": "acme", "name": "support-bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return client


def _copy(src, tmp_path, name="a"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_model_push_records_fingerprint(acme_base):
    version = Version.objects.get(repository__name="llama-tiny")
    modules = version.fingerprint["modules"]
    assert modules["model.layers.0.self_attn.q_proj"] == [64, 64]
    assert modules["model.layers.1.mlp.down_proj"] == [128, 64]
    assert acme_base["number"] == 1 and acme_base["digest"].startswith("sha256:")


def test_adapter_push_rewrites_base_reference(adapter_repo, tiny_adapter, tmp_path):
    folder, _ = tiny_adapter
    response = api_push(adapter_repo, "acme/support-bot", folder, message="first")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["created"] is True
    assert body["adapter"]["peft_type"] == "LORA" and body["adapter"]["r"] == 8
    assert body["base_model"]["repo"] == "acme/llama-tiny"
    serving = body["serving"]
    assert sorted(serving.pop("target_modules")) == ["q_proj", "v_proj"]  # peft writes a set: any order
    assert serving == {"peft_type": "LORA", "rank": 8, "lora_alpha": 16, "modules_to_save": None, "use_dora": False,
                       "mergeable": True, "multi_lora_servable": True}
    config_file = next(f for f in body["files"] if f["path"] == "adapter_config.json")
    stored = json.loads(adapter_repo.get(config_file["url"]).getvalue())
    assert stored["base_model_name_or_path"] == "acme/llama-tiny"
    original = json.loads((folder / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] != "acme/llama-tiny"
    assert {k: v for k, v in stored.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in original.items() if k != "base_model_name_or_path"
    }


def test_unchanged_repush_creates_nothing_and_uploads_nothing(adapter_repo, tiny_adapter):
    folder, _ = tiny_adapter
    first = api_push(adapter_repo, "acme/support-bot", folder).json()
    negotiated = adapter_repo.post("/api/v1/repos/acme/support-bot/uploads", {"files": file_specs(folder)}, format="json")
    assert negotiated.json()["missing"] == []
    again = adapter_repo.post("/api/v1/repos/acme/support-bot/versions", {"files": file_specs(folder)}, format="json")
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["number"] == first["number"] == 1
    assert Version.objects.filter(repository__name="support-bot").count() == 1


def test_one_changed_file_uploads_only_that_file(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    api_push(adapter_repo, "acme/support-bot", folder)
    (folder / "README.md").write_text("# support bot\nnow with a card\n")
    negotiated = adapter_repo.post("/api/v1/repos/acme/support-bot/uploads", {"files": file_specs(folder)}, format="json")
    missing = negotiated.json()["missing"]
    assert [m["sha256"] for m in missing] == [hashlib.sha256((folder / "README.md").read_bytes()).hexdigest()]
    response = api_push(adapter_repo, "acme/support-bot", folder)
    assert response.status_code == 201 and response.json()["number"] == 2


def _refused(client, folder, code, status=400):
    before = Version.objects.count()
    response = api_push(client, "acme/support-bot", folder)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code, response.json()
    assert Version.objects.count() == before
    return response.json()["error"]["message"]


def test_refuses_pickle_weights_by_name(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + b"\0" * 32)
    message = _refused(adapter_repo, folder, "pickle_refused")
    assert "pytorch_model.bin" in message and "safetensors" in message


def test_refuses_pickle_renamed_safetensors(adapter_repo, tiny_adapter, tmp_path):
    import torch

    folder = _copy(tiny_adapter[0], tmp_path)
    torch.save({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    message = _refused(adapter_repo, folder, "pickle_refused")
    assert "adapter_model.safetensors" in message


def test_refuses_safetensors_header_that_lies(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10_000_000  # past the end of the file
    raw = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    assert "adapter_model.safetensors" in _refused(adapter_repo, folder, "invalid_safetensors")


def test_refuses_dotdot_path_before_upload(adapter_repo, tiny_adapter):
    specs = file_specs(tiny_adapter[0]) + [{"path": "../escape.json", "sha256": "0" * 64, "size": 2}]
    response = adapter_repo.post("/api/v1/repos/acme/support-bot/uploads", {"files": specs}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_path"
    commit = adapter_repo.post("/api/v1/repos/acme/support-bot/versions", {"files": specs}, format="json")
    assert commit.status_code == 400 and commit.json()["error"]["code"] == "invalid_path"
    assert Version.objects.filter(repository__name="support-bot").count() == 0


def test_refuses_adapter_that_does_not_fit_base(adapter_repo, tmp_path):
    from examples import tiny

    other_base = tiny.make_tiny_llama(tmp_path / "wide", hidden_size=32)
    tiny.train_lora(other_base, tmp_path / "narrow-adapter", steps=1)
    message = _refused(adapter_repo, tmp_path / "narrow-adapter", "shape_mismatch")
    assert "lora_A" in message and "acme/llama-tiny@1" in message


def test_refuses_adapter_targeting_missing_module(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "qkv_fused"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "qkv_fused" in _refused(adapter_repo, folder, "unknown_module")


def test_refuses_blob_whose_bytes_do_not_match(adapter_repo, tiny_adapter):
    folder = tiny_adapter[0]
    specs = file_specs(folder)
    negotiated = adapter_repo.post("/api/v1/repos/acme/support-bot/uploads", {"files": specs}, format="json").json()
    target = negotiated["missing"][0]
    put = adapter_repo.generic("PUT", target["upload"]["url"], b"x" * target["size"], content_type="application/octet-stream")
    assert put.status_code == 400 and put.json()["error"]["code"] == "digest_mismatch"
    assert not Blob.objects.filter(sha256=target["sha256"]).exists()
    commit = adapter_repo.post("/api/v1/repos/acme/support-bot/versions", {"files": specs}, format="json")
    assert commit.status_code == 400 and commit.json()["error"]["code"] == "missing_blob"
    assert Version.objects.filter(repository__name="support-bot").count() == 0


def test_refuses_declared_size_that_differs(adapter_repo, tiny_adapter):
    folder = tiny_adapter[0]
    api_push(adapter_repo, "acme/support-bot", folder)
    specs = file_specs(folder)
    specs[0]["size"] += 1
    commit = adapter_repo.post("/api/v1/repos/acme/support-bot/versions", {"files": specs, "message": "x"}, format="json")
    assert commit.status_code == 400 and commit.json()["error"]["code"] == "size_mismatch"


def test_adapter_push_needs_adapter_config(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    (folder / "adapter_config.json").unlink()
    _refused(adapter_repo, folder, "invalid_adapter_config")


def test_aliases_on_push_and_moves(adapter_repo, tiny_adapter, tmp_path):
    folder = _copy(tiny_adapter[0], tmp_path)
    assert api_push(adapter_repo, "acme/support-bot", folder, aliases=["prod"]).status_code == 201
    (folder / "README.md").write_text("v2")
    assert api_push(adapter_repo, "acme/support-bot", folder).json()["aliases"] == ["latest"]
    assert adapter_repo.get("/api/v1/repos/acme/support-bot/versions/prod").json()["number"] == 1
    moved = adapter_repo.put("/api/v1/repos/acme/support-bot/aliases/prod", {"version": 2}, format="json")
    assert moved.status_code == 200 and moved.json()["version"] == 2
    history = adapter_repo.get("/api/v1/repos/acme/support-bot/aliases/prod").json()["history"]
    assert [(h["from"], h["to"], h["moved_by"]) for h in history] == [(1, 2, "alice"), (None, 1, "alice")]
    latest = adapter_repo.put("/api/v1/repos/acme/support-bot/aliases/latest", {"version": 1}, format="json")
    assert latest.status_code == 400
    digest = adapter_repo.get("/api/v1/repos/acme/support-bot/versions/1").json()["digest"]
    assert adapter_repo.get(f"/api/v1/repos/acme/support-bot/versions/{digest}").json()["number"] == 1
    assert adapter_repo.delete("/api/v1/repos/acme/support-bot/aliases/prod").status_code == 204
    assert adapter_repo.get("/api/v1/repos/acme/support-bot/versions/prod").status_code == 404
