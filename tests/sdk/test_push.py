from __future__ import annotations

import json

import pytest

from pefthub import NotFound, ValidationError, Version

from .fakes import Reply, error, sha


def adapter_folder(root, weights=b"\x00weights" * 1000):
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    files = {
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}).encode(),
        "adapter_model.safetensors": weights,
        "sub/notes.md": b"# notes\n",
        "empty.txt": b"",
    }
    for path, data in files.items():
        (root / path).write_bytes(data)
    (root / ".git" / "HEAD").write_bytes(b"ref: main")
    return files


def test_push_creates_the_repo_uploads_blobs_and_commits(tmp_path, fake_hub, make_hub, server):
    files = adapter_folder(tmp_path / "out")
    hub = make_hub()

    version = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny@1", aliases=["staging"],
                       message="first", metadata={"loss": 0.5}, visibility="internal")

    assert isinstance(version, Version)
    assert (version.repo, version.number, version.created, version.ref) == ("acme/bot", 1, True, "acme/bot@1")
    assert "staging" in version.aliases
    # the repo did not exist: uploads 404 -> POST /repos -> uploads again
    calls = [(s.method, s.path) for s in server.requests()]
    assert calls[:3] == [("POST", "/api/v1/repos/acme/bot/uploads"), ("POST", "/api/v1/repos"),
                         ("POST", "/api/v1/repos/acme/bot/uploads")]
    [create] = [s for s in server.requests("POST") if s.path == "/api/v1/repos"]
    created = json.loads(create.body)
    assert created == {"namespace": "acme", "name": "bot", "kind": "adapter", "visibility": "internal",
                       "description": "", "base_model": "acme/llama-tiny"}

    # every blob arrived byte for byte, with exactly the signed headers and no token
    puts = server.requests("PUT", "/signed/blobs/")
    assert {p.path.rsplit("/", 1)[1] for p in puts} == {sha(d) for d in files.values()}
    for put in puts:
        digest = put.path.rsplit("/", 1)[1]
        assert sha(put.body) == digest
        assert put.header("Authorization") is None
        assert put.header("X-Upload-Signature") == f"sig-{digest[:8]}"
        assert put.header("Content-Type") == "application/octet-stream"
        assert int(put.header("Content-Length")) == len(put.body)
        assert put.header("Transfer-Encoding") is None
    assert fake_hub.blobs == {sha(d): d for d in files.values()}

    commit = json.loads(server.requests("POST", "/api/v1/repos/acme/bot/versions")[0].body)
    assert commit["files"] == [{"path": p, "sha256": sha(files[p]), "size": len(files[p])} for p in sorted(files)]
    assert (commit["message"], commit["metadata"], commit["aliases"], commit["base_model"]) == (
        "first", {"loss": 0.5}, ["staging"], "acme/llama-tiny@1")


def test_repush_unchanged_uploads_nothing_and_says_not_created(tmp_path, make_hub, server):
    adapter_folder(tmp_path / "out")
    hub = make_hub()
    first = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    puts_before = len(server.requests("PUT"))

    again = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")

    assert len(server.requests("PUT")) == puts_before
    assert again.created is False
    assert (again.number, again.digest) == (first.number, first.digest)


def test_push_sends_only_changed_blobs(tmp_path, make_hub, server):
    files = adapter_folder(tmp_path / "out")
    hub = make_hub()
    hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    new_weights = b"\x01new weights" * 500
    (tmp_path / "out" / "adapter_model.safetensors").write_bytes(new_weights)
    n_puts = len(server.requests("PUT"))

    v2 = hub.push(tmp_path / "out", "acme/bot")

    new_puts = server.requests("PUT")[n_puts:]
    assert [p.body for p in new_puts] == [new_weights]
    assert v2.number == 2 and v2.created
    assert len(files) == 4


def test_push_single_file_infers_dataset(tmp_path, make_hub, fake_hub):
    data = b'{"text": "hello"}\n{"text": "world"}\n'
    (tmp_path / "train.jsonl").write_bytes(data)
    version = make_hub().push(tmp_path / "train.jsonl", "acme/support-data")
    assert fake_hub.repos["acme/support-data"]["kind"] == "dataset"
    assert fake_hub.versions["acme/support-data"][0]["files"] == [
        {"path": "train.jsonl", "sha256": sha(data), "size": len(data)}]
    assert version.ref == "acme/support-data@1"


def test_unknown_kind_fails_before_any_request(tmp_path, make_hub, server):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("hi")
    with pytest.raises(ValidationError, match="pass kind="):
        make_hub().push(tmp_path / "out", "acme/bot")
    assert server.requests() == []


def test_no_create_leaves_a_missing_repo_missing(tmp_path, make_hub, fake_hub, server):
    adapter_folder(tmp_path / "out")
    with pytest.raises(NotFound):
        make_hub().push(tmp_path / "out", "acme/bot", create=False)
    assert "acme/bot" not in fake_hub.repos
    assert [s.path for s in server.requests("POST")] == ["/api/v1/repos/acme/bot/uploads"]


def test_upload_retry_resends_the_whole_file(tmp_path, make_hub, fake_hub, server, sleeps):
    weights = bytes(range(256)) * 8192  # 2 MiB: several blocks
    adapter_folder(tmp_path / "out", weights=weights)
    fails = [error(503, "unavailable", "try again", **{"Retry-After": "1"})]
    original = fake_hub.put_blob

    def put_once_failing(seen, match):
        if match["sha"] == sha(weights) and fails:
            return fails.pop()
        return original(seen, match)

    server.route("PUT", r"/signed/blobs/(?P<sha>[0-9a-f]{64})", put_once_failing)
    make_hub().push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")

    tries = [p for p in server.requests("PUT") if p.path.endswith(sha(weights))]
    assert [len(t.body) for t in tries] == [len(weights), len(weights)]
    assert fake_hub.blobs[sha(weights)] == weights
    assert sleeps == [1.0]


def test_upload_refusal_surfaces_the_servers_error(tmp_path, make_hub, server):
    adapter_folder(tmp_path / "out")
    server.route("PUT", r"/signed/blobs/.*", lambda s, m: error(400, "size_mismatch", "expected 12 bytes"))
    with pytest.raises(ValidationError, match="expected 12 bytes") as info:
        make_hub().push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    assert info.value.code == "size_mismatch"
    assert server.requests("POST", "/api/v1/repos/acme/bot/versions") == []


def test_server_asking_for_an_unknown_blob_is_an_error(tmp_path, make_hub, server, fake_hub):
    adapter_folder(tmp_path / "out")
    fake_hub.repos["acme/bot"] = {"id": "acme/bot"}
    server.route("POST", "/api/v1/repos/acme/bot/uploads", lambda s, m: Reply(200, {"missing": [
        {"sha256": "f" * 64, "size": 1, "upload": {"method": "PUT", "url": "/x", "headers": {}}}], "present": []}))
    with pytest.raises(Exception, match="does not hold"):
        make_hub().push(tmp_path / "out", "acme/bot")


def test_upload_streams_from_disk_in_blocks(tmp_path, make_hub, fake_hub, monkeypatch):
    from pefthub import _upload

    weights = bytes(range(256)) * 16384  # 4 MiB
    adapter_folder(tmp_path / "out", weights=weights)
    reads: list[int] = []
    original = _upload._FileBody.read

    def spy(self, n=-1):
        chunk = original(self, n)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(_upload._FileBody, "read", spy)
    make_hub().push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    assert fake_hub.blobs[sha(weights)] == weights
    assert sum(reads) >= len(weights) and max(reads) <= 1024 * 1024  # never the whole file at once


def test_push_with_progress_bars_on(tmp_path, make_hub, fake_hub, capsys):
    files = adapter_folder(tmp_path / "out")
    version = make_hub(progress=True).push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    assert version.number == 1 and fake_hub.blobs == {sha(d): d for d in files.values()}
    assert "uploading" in capsys.readouterr().err
