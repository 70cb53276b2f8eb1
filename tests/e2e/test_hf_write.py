"""Hugging Face tools write to the hub, in fresh processes, against `pefthub-server up` (local storage and S3).

Only the tools' own APIs with HF_ENDPOINT / HF_TOKEN / HF_HUB_DISABLE_XET=1 (what
``eval "$(pefthub env)"`` sets): ``PeftModel.push_to_hub``, ``Trainer.push_to_hub``,
``HfApi`` (upload_folder, upload_file, create_commit, delete_file/folder, branches, tags) and
the ``hf`` CLI. One server per storage backend, several checks per client process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
import torch

from tests.e2e.conftest import BIN, running_hub
from tests.fixtures.s3 import S3_CLIENT_KWARGS, s3_client

SCRIPT = Path(__file__).with_name("hf_write_script.py")
ROOT = Path(__file__).resolve().parents[2]
PICKLE_WORDS = "is a pickle-based PyTorch file, which can run arbitrary code when loaded"


@pytest.fixture(scope="module", params=["local", "s3"])
def hub(request, tmp_path_factory, tiny_base):
    """`pefthub-server up` (blobs on local disk, or in a moto S3 bucket) with alice (admin of acme), carol
    (in no team), a read-scope token of alice's, and acme/llama-tiny pushed by the SDK."""
    from pefthub import Hub

    env = {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_server")
        bucket = f"pefthub-hf-write-{uuid.uuid4().hex[:12]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        env = {"PEFTHUB_STORAGE": f"s3://{bucket}/hub", "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": S3_CLIENT_KWARGS["aws_access_key_id"],
               "AWS_SECRET_ACCESS_KEY": S3_CLIENT_KWARGS["aws_secret_access_key"]}
    work = tmp_path_factory.mktemp(f"hf-write-{request.param}")
    with running_hub(work / "server", "--no-worker", env=env) as server:
        alice = server.adduser("alice", "--team", "acme", "--role", "admin")
        carol = server.adduser("carol")
        read = requests.post(f"{server.url}/api/v1/tokens", json={"name": "ro", "scope": "read"},
                             headers={"Authorization": f"Bearer {alice}"}).json()["token"]
        with Hub(url=server.url, token=alice, cache_dir=work / "cache", progress=False) as sdk:
            sdk.push(tiny_base, "acme/llama-tiny")
            yield {"server": server, "alice": alice, "carol": carol, "read": read, "sdk": sdk, "work": work,
                   "backend": request.param}


def _env(hub: dict, home: Path, *, xet_off: bool = True) -> dict[str, str]:
    """What `eval "$(pefthub env)"` gives a fresh shell, and nothing of this test process's HF_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DJANGO_", "AWS_"))}
    env.update({"HF_ENDPOINT": f"{hub['server'].url}/hf", "HF_TOKEN": hub["alice"], "HF_HOME": str(home),
                "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)})
    if xet_off:
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def _script(hub: dict, tmp_path: Path, mode: str, *args: str, xet_off: bool = True) -> dict:
    out = tmp_path / f"{mode}.pt"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), mode, *args], capture_output=True, text=True,
                          env=_env(hub, tmp_path / "hf-home", xet_off=xet_off), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out)


def _api(hub: dict, path: str):
    response = requests.get(f"{hub['server'].url}/api/v1/repos/{path}", headers={"Authorization": f"Bearer {hub['alice']}"})
    assert response.status_code == 200, response.text
    return response.json()


def _versions(hub: dict, repo: str) -> list[dict]:
    return _api(hub, f"{repo}/versions?page_size=100")["results"]


def test_push_to_hub_then_from_pretrained_commits_refs_and_refusals(hub, tmp_path):
    sdk = hub["sdk"]
    found = _script(hub, tmp_path, "push", hub["carol"], hub["read"])

    # PeftModel.push_to_hub into a new repository, loaded back by id: the same logits
    assert torch.equal(found["loaded"], found["local"])
    bot = _api(hub, "acme/bot")
    assert (bot["kind"], bot["base_model"], bot["visibility"], bot["peft_type"]) == ("adapter", "acme/llama-tiny",
                                                                                   "private", "LORA")
    first = sdk.version("acme/bot@1")
    assert found["push_commit"] == first.digest_hex[:40]
    assert {f.path for f in first.files} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}

    # upload_folder of an adapter: a verified version, in a handful of requests
    counted = sdk.version("acme/counted@1")
    assert found["counted_commit"] == counted.digest_hex[:40]
    assert sorted(f.path for f in counted.files) == found["counted_files"]
    writes = [(m, p) for m, p in found["upload_folder_requests"] if "/llama-tiny" not in p]
    verify = [("POST", "/hf/acme/counted.git/info/lfs/objects/verify")] if hub["backend"] == "s3" else []
    assert [w if w[0] == "POST" else "PUT" for w in writes] == [
        ("POST", "/hf/api/repos/create"), ("POST", "/hf/api/validate-yaml"), ("POST", "/hf/api/validate-yaml"),
        ("POST", "/hf/api/models/acme/counted/preupload/main"), ("POST", "/hf/acme/counted.git/info/lfs/objects/batch"),
        "PUT", *verify, ("POST", "/hf/api/models/acme/counted/commit/main")]

    # refusals, in the exceptions huggingface_hub raises, with the hub's words
    assert found["pickle"]["type"] == "BadRequestError" and PICKLE_WORDS in found["pickle"]["server_message"]
    assert "contains pickle data" in found["pickle_renamed"]["server_message"]
    assert found["carol_upload"]["type"] == "RepositoryNotFoundError" and found["carol_upload"]["code"] == "RepoNotFound"
    assert found["carol_create"]["status"] == 404 and "acme" in found["carol_create"]["server_message"]
    assert found["read_scope"]["status"] == 403 and "scope `read`" in found["read_scope"]["server_message"]
    assert not any(v["created_by"] == "carol" for v in _versions(hub, "acme/bot"))

    # commits are deltas: delete_file / delete_folder make versions without those files
    assert found["files_with_notes"] == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                         "docs/more.md", "docs/notes.md"]
    assert found["files_without_notes"] == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                            "docs/more.md"]
    assert found["files_without_docs"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    # CommitOperationCopy: an LFS copy cites the blob by oid (alice reads it), a small file comes inline
    assert found["files_with_copy"] == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        "copy/adapter_config.json", "copy/adapter_model.safetensors"]
    assert found["copy_then_delete"][1] == found["without_docs"]  # the same files: the same commit id
    assert found["delete_missing"]["type"] == "RemoteEntryNotFoundError"
    messages = [v["message"] for v in _versions(hub, "acme/bot")]
    assert "Delete docs/notes.md with huggingface_hub" in messages

    # branches and tags are aliases; a commit to the branch moves it, a tag stays; stale parents are 412
    aliases = {a["name"]: a["version"] for a in _api(hub, "acme/bot/aliases")}
    newest = _api(hub, "acme/bot")["latest_version"]
    assert aliases["dev"] == newest and "gone" not in aliases
    assert found["dev_files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors", "dev.md"]
    assert found["v1_files"] == found["files_without_docs"]
    assert found["dev_sha"] == found["main_sha"] == sdk.version(f"acme/bot@{newest}").digest_hex[:40]
    assert found["v1_sha"] == sdk.version(f"acme/bot@{aliases['v1']}").digest_hex[:40] == found["without_docs"]
    assert found["tag_again"]["status"] == 409
    assert found["tag_commit"]["status"] == 400 and "is a tag" in found["tag_commit"]["server_message"]
    assert found["stale_parent"]["status"] == 412


def test_trainer_push_to_hub_after_two_steps_makes_a_version(hub, tmp_path):
    found = _script(hub, tmp_path, "trainer")
    assert len(found["losses"]) == 2
    version = hub["sdk"].version("acme/trained")
    assert found["commit"] == version.digest_hex[:40]
    # training_args.bin (a pickle nothing loads) stays behind; the adapter, tokenizer and card are kept
    assert "training_args.bin" in found["saved"]
    assert sorted(f.path for f in version.files) == found["files"] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert _api(hub, "acme/trained")["kind"] == "adapter"


def test_hf_upload_and_hf_download_round_trip_a_folder(hub, tmp_path, tiny_base):
    from examples import tiny

    folder = tmp_path / "folder"
    tiny.train_lora(tiny_base, folder, steps=1, seed=4)
    config = (folder / "adapter_config.json").read_text()
    (folder / "adapter_config.json").write_text(config.replace(str(tiny_base), "acme/llama-tiny"))
    (folder / "README.md").unlink(missing_ok=True)  # the hub merges its front matter into READMEs
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_bytes(os.urandom(64).hex().encode())
    (folder / "extra" / "table.jsonl").write_bytes(b'{"a": 1}\n' * 30000)  # over preupload's inline size: LFS
    env = _env(hub, tmp_path / "hf-home")
    up = subprocess.run([str(BIN / "hf"), "upload", "acme/folder", str(folder)], env=env, capture_output=True, text=True,
                        timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    out = tmp_path / "down"
    down = subprocess.run([str(BIN / "hf"), "download", "acme/folder", "--local-dir", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    sent = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
           if p.is_file() and ".cache" not in p.relative_to(out).parts}
    assert set(got) == set(sent) | {"README.md"}  # the hub's card
    assert {path: got[path] for path in sent} == sent


def test_a_user_who_forgot_to_turn_xet_off_is_told_how(hub, tmp_path):
    if hub["backend"] == "s3":
        pytest.skip("the message does not depend on storage")
    found = _script(hub, tmp_path, "xet", xet_off=False)
    assert "HF_HUB_DISABLE_XET=1" in found["forgot_xet"]["text"]
