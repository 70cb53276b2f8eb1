"""``Hub`` against the real hub, through the proxy: the read/admin calls (right method, path and
body; answers parsed into objects), push (negotiate, upload what is missing, commit) and raw requests."""

from __future__ import annotations

import json

import pytest

from pefthub import Conflict, NotFound, Repo, ValidationError, Version

from .proxy import Reply, error, json_body
from .state import BASE, sha, stored_blobs, write_tree


# -- repositories, versions, aliases ----------------------------------------------------------
def test_repos_follows_pages_by_query_only(make_hub, seed, proxy):
    for i in range(7):
        seed.push(f"acme/r{i}", {"train.jsonl": b"{}\n"})

    def elsewhere(page):  # `next` names the host the server believes it has: the client must not trust it
        if page["next"]:
            page["next"] = "http://internal.invalid:9/api/v1/repos?" + page["next"].split("?", 1)[1]

    proxy.rewrite("GET", "/api/v1/repos", json_body(elsewhere))
    repos = list(make_hub().repos(kind="dataset", search="r", page_size=3))

    assert [r.id for r in repos] == [f"acme/r{i}" for i in range(7)]
    assert all(isinstance(r, Repo) and r.kind == "dataset" and r.latest_version == 1 for r in repos)
    queries = [s.query for s in proxy.requests("GET", "/api/v1/repos")]
    assert [q.get("page") for q in queries] == [None, "2", "3"]
    # the `next` links name another host: only their query was used
    assert queries[0] == {"kind": "dataset", "search": "r", "page_size": "3"}
    assert all(s.status == 200 for s in proxy.requests())
    assert repos[0].raw["namespace"] == "acme"


def test_create_repo_and_exist_ok(make_hub, seed):
    seed.base()
    hub = make_hub()
    repo = hub.create_repo("acme/bot", kind="adapter", base_model="acme/llama-tiny@2", description="d")
    assert (repo.id, repo.kind, repo.base_model, repo.description) == ("acme/bot", "adapter", "acme/llama-tiny", "d")
    # an adapter repository always names its base, also when it exists already
    with pytest.raises(Conflict):
        hub.create_repo("acme/bot", kind="adapter", base_model=BASE)
    assert hub.create_repo("acme/bot", kind="adapter", base_model=BASE, exist_ok=True).id == "acme/bot"


def test_update_and_delete_repo(make_hub, seed, proxy, alice):
    hub = make_hub(token=alice.new_token("admin"))  # deleting a repository takes an admin-scope token
    hub.create_repo("acme/bot", kind="dataset")
    repo = hub.update_repo("acme/bot", description="new")
    assert repo.description == "new" and repo.visibility == "private"
    [patch] = proxy.requests("PATCH")
    assert json.loads(patch.body) == {"description": "new"}
    assert hub.delete_repo("acme/bot") is None
    with pytest.raises(NotFound):
        seed.hub.repo("acme/bot")


def test_versions_version_and_aliases(make_hub, seed, proxy):
    seed.push("acme/bot", {"a.json": b"1"})
    seed.push("acme/bot", {"a.json": b"2"})
    hub = make_hub()

    listed = list(hub.versions("acme/bot"))
    assert [v.number for v in listed] == [2, 1] and all(v.files is None for v in listed)

    assert hub.set_alias("acme/bot@1", "prod")["version"] == 1
    assert json.loads(proxy.requests("PUT")[0].body) == {"version": 1}  # a number stays a number
    v = hub.version("acme/bot@prod")
    assert isinstance(v, Version) and v.number == 1 and v.ref == "acme/bot@1" and "prod" in v.aliases
    assert [(f.path, f.size) for f in v.files] == [("a.json", 1)]

    pinned = hub.version(f"acme/bot@{v.digest}")
    assert pinned.number == 1
    assert proxy.requests("GET")[-1].path == f"/api/v1/repos/acme/bot/versions/{v.digest}"

    # the hub lists the automatic `latest` first
    aliases = hub.aliases("acme/bot")
    assert [(a["name"], a["version"]) for a in aliases] == [("latest", 2), ("prod", 1)]
    assert aliases[1]["updated_by"] == "alice"
    hub.delete_alias("acme/bot", "prod")
    assert [a["name"] for a in hub.aliases("acme/bot")] == ["latest"]


def test_account_teams_and_tokens_hit_the_documented_endpoints(make_hub, proxy, bob):
    hub = make_hub()

    assert hub.teams()[0]["name"] == "acme"
    hub.create_team("labs")
    assert hub.team("labs")["members"] == [{"username": "alice", "role": "admin"}]
    assert hub.add_member("labs", "bob", role="write") == {"username": "bob", "role": "write"}
    assert hub.set_member_role("labs", "bob", "admin") == {"username": "bob", "role": "admin"}
    assert hub.remove_member("labs", "bob") is None
    created = hub.create_token("ci", scope="read", expires_in_days=30)
    assert created["token"] and (created["name"], created["scope"]) == ("ci", "read")
    hub.create_token("ci2")
    assert hub.revoke_token(created["id"]) is None

    seen = [(s.method, s.path, s.json()) for s in proxy.requests()]
    assert seen == [
        ("GET", "/api/v1/teams", None),
        ("POST", "/api/v1/teams", {"name": "labs"}),
        ("GET", "/api/v1/teams/labs", None),
        ("POST", "/api/v1/teams/labs/members", {"username": "bob", "role": "write"}),
        ("PATCH", "/api/v1/teams/labs/members/bob", {"role": "admin"}),
        ("DELETE", "/api/v1/teams/labs/members/bob", None),
        ("POST", "/api/v1/tokens", {"name": "ci", "scope": "read", "expires_in_days": 30}),
        ("POST", "/api/v1/tokens", {"name": "ci2", "scope": "read"}),
        ("DELETE", f"/api/v1/tokens/{created['id']}", None),
    ]


def test_whoami(make_hub):
    assert make_hub().whoami()["username"] == "alice"


def test_request_is_a_raw_authenticated_call(make_hub, job_inputs, worker, proxy):
    job_id = job_inputs.train().id
    token = worker.hub.token
    hub = make_hub(token=token)
    out = hub.request("post", f"/jobs/{job_id}/claim", json={"worker": "h:1"}, params={"v": 1}, headers={"X-Extra": "y"})
    assert (out["job"]["id"], out["job"]["worker"], out["attempt"]) == (job_id, "h:1", 1)
    [claim] = proxy.requests("POST")
    assert (claim.header("Authorization"), claim.header("X-Extra"), claim.query) == (f"Bearer {token}", "y", {"v": "1"})
    with pytest.raises(NotFound):
        hub.request("GET", "/nowhere")


# -- push ---------------------------------------------------------------------------------------------
@pytest.fixture
def adapter_folder(seed, tmp_path):
    """``adapter_folder(root, variant=0)``: a real adapter (on the pushed base) with a sub-folder,
    an empty file and a hidden folder; returns the files a push sends."""
    seed.base()

    def make(root, variant: int = 0) -> dict[str, bytes]:
        files = {**seed.adapter_files(variant), "sub/notes.md": b"# notes\n", "empty.txt": b""}
        write_tree(root, {**files, ".git/HEAD": b"ref: main"})
        return files

    return make


def uploads(proxy, blob: str = "") -> list:
    return proxy.requests("PUT", f"/api/v1/blobs/{blob}")


def test_push_creates_the_repo_uploads_blobs_and_commits(tmp_path, adapter_folder, make_hub, proxy, local_storage):
    files = adapter_folder(tmp_path / "out")
    before = stored_blobs(local_storage)
    hub = make_hub()

    version = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny@1", aliases=["staging"],
                       message="first", metadata={"loss": 0.5}, visibility="internal")

    assert isinstance(version, Version)
    assert (version.repo, version.number, version.created, version.ref) == ("acme/bot", 1, True, "acme/bot@1")
    assert "staging" in version.aliases
    # the repo did not exist: the commit created it with its first version, no request of its own
    calls = [(s.method, s.path, s.status) for s in proxy.requests() if s.method != "PUT"]
    assert calls == [("POST", "/api/v1/repos/acme/bot/uploads", 200), ("POST", "/api/v1/repos/acme/bot/versions", 201)]
    negotiated = json.loads(proxy.requests("POST", "/api/v1/repos/acme/bot/uploads")[0].body)
    assert {k: v for k, v in negotiated.items() if k != "files"} == {
        "kind": "adapter", "visibility": "internal", "base_model": "acme/llama-tiny@1",
        # should nothing be missing, the hub commits at once with these
        "commit": {"message": "first", "metadata": {"loss": 0.5}, "aliases": ["staging"]}}
    repo = hub.repo("acme/bot")
    assert (repo.kind, repo.visibility, repo.base_model) == ("adapter", "internal", "acme/llama-tiny")

    # every blob arrived byte for byte, at the URL and with exactly the headers the hub listed, and no token
    targets = {m["sha256"]: m["upload"] for m in proxy.requests("POST", "/api/v1/repos/acme/bot/uploads")[-1]
               .response_json()["missing"]}
    puts = uploads(proxy)
    assert {p.path.rsplit("/", 1)[1] for p in puts} == set(targets) == {sha(d) for d in files.values()}
    for put in puts:
        digest = put.path.rsplit("/", 1)[1]
        assert sha(put.body) == digest and put.status == 201
        assert targets[digest]["url"] == proxy.url + put.target
        assert put.header("Authorization") is None
        assert targets[digest]["headers"] and all(put.header(k) == v for k, v in targets[digest]["headers"].items())
        assert int(put.header("Content-Length")) == len(put.body)
        assert put.header("Transfer-Encoding") is None
    assert {k: v for k, v in stored_blobs(local_storage).items() if k not in before} == {sha(d): d for d in files.values()}

    commit = json.loads(proxy.requests("POST", "/api/v1/repos/acme/bot/versions")[0].body)
    assert commit["files"] == [{"path": p, "sha256": sha(files[p]), "size": len(files[p])} for p in sorted(files)]
    assert (commit["message"], commit["metadata"], commit["aliases"], commit["base_model"]) == (
        "first", {"loss": 0.5}, ["staging"], "acme/llama-tiny@1")
    assert (commit["kind"], commit["visibility"]) == ("adapter", "internal")


def test_repush_unchanged_uploads_nothing_and_says_not_created(tmp_path, adapter_folder, make_hub, proxy):
    adapter_folder(tmp_path / "out")
    hub = make_hub()
    first = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    puts_before = len(proxy.requests("PUT"))

    posts_before = len(proxy.requests("POST"))
    again = hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")

    assert len(proxy.requests("PUT")) == puts_before
    assert [(s.path, s.status) for s in proxy.requests("POST")[posts_before:]] == [
        ("/api/v1/repos/acme/bot/uploads", 200)]  # one request: the negotiation committed at once
    assert again.created is False
    assert (again.number, again.digest) == (first.number, first.digest)


def test_push_sends_only_changed_blobs(tmp_path, adapter_folder, seed, make_hub, proxy):
    files = adapter_folder(tmp_path / "out")
    hub = make_hub()
    hub.push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    new_weights = seed.adapter_files(variant=1)["adapter_model.safetensors"]
    (tmp_path / "out" / "adapter_model.safetensors").write_bytes(new_weights)
    n_puts = len(proxy.requests("PUT"))

    v2 = hub.push(tmp_path / "out", "acme/bot")

    new_puts = proxy.requests("PUT")[n_puts:]
    assert [p.body for p in new_puts] == [new_weights]
    assert v2.number == 2 and v2.created
    assert len(files) == 4


def test_push_single_file_infers_dataset(tmp_path, make_hub, seed):
    data = b'{"text": "hello"}\n{"text": "world"}\n'
    (tmp_path / "train.jsonl").write_bytes(data)
    version = make_hub().push(tmp_path / "train.jsonl", "acme/support-data")
    assert seed.hub.repo("acme/support-data").kind == "dataset"
    stored = seed.hub.version("acme/support-data@1")
    assert [(f.path, f.sha256, f.size) for f in stored.files] == [("train.jsonl", sha(data), len(data))]
    assert version.ref == "acme/support-data@1"


def test_unknown_kind_fails_before_any_request(tmp_path, make_hub, proxy):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("hi")
    with pytest.raises(ValidationError, match="pass kind="):
        make_hub().push(tmp_path / "out", "acme/bot")
    assert proxy.requests() == []


def test_no_create_leaves_a_missing_repo_missing(tmp_path, adapter_folder, make_hub, seed, proxy):
    adapter_folder(tmp_path / "out")
    with pytest.raises(NotFound):
        make_hub().push(tmp_path / "out", "acme/bot", create=False)
    with pytest.raises(NotFound):
        seed.hub.repo("acme/bot")
    assert [s.path for s in proxy.requests("POST")] == ["/api/v1/repos/acme/bot/uploads"]


def test_upload_retry_resends_the_whole_file(tmp_path, make_hub, proxy, sleeps, local_storage):
    weights = bytes(range(256)) * 8192  # 2 MiB: several blocks
    write_tree(tmp_path / "out", {"train.jsonl": weights, "README.md": b"# data\n"})
    proxy.reply("PUT", f"/api/v1/blobs/{sha(weights)}", error(503, "unavailable", "try again", **{"Retry-After": "1"}))
    make_hub().push(tmp_path / "out", "acme/data")

    tries = uploads(proxy, sha(weights))
    assert [len(t.body) for t in tries] == [len(weights), len(weights)]
    assert stored_blobs(local_storage)[sha(weights)] == weights
    assert sleeps == [1.0]


def test_upload_refusal_surfaces_the_servers_error(tmp_path, adapter_folder, make_hub, proxy):
    adapter_folder(tmp_path / "out")
    proxy.reply("PUT", r"/api/v1/blobs/.*", error(400, "size_mismatch", "expected 12 bytes"), times=None)
    with pytest.raises(ValidationError, match="expected 12 bytes") as info:
        make_hub().push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    assert info.value.code == "size_mismatch"
    assert proxy.requests("POST", "/api/v1/repos/acme/bot/versions") == []


def test_server_asking_for_an_unknown_blob_is_an_error(tmp_path, adapter_folder, make_hub, proxy):
    adapter_folder(tmp_path / "out")
    proxy.reply("POST", "/api/v1/repos/acme/bot/uploads", Reply(200, {"missing": [
        {"sha256": "f" * 64, "size": 1, "upload": {"method": "PUT", "url": "/x", "headers": {}}}], "present": []}))
    with pytest.raises(Exception, match="does not hold"):
        make_hub().push(tmp_path / "out", "acme/bot")


def test_upload_streams_from_disk_in_blocks(tmp_path, make_hub, monkeypatch, local_storage):
    from pefthub import _upload

    weights = bytes(range(256)) * 16384  # 4 MiB
    write_tree(tmp_path / "out", {"train.jsonl": weights})
    reads: list[int] = []
    original = _upload._FileBody.read

    def spy(self, n=-1):
        chunk = original(self, n)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(_upload._FileBody, "read", spy)
    make_hub().push(tmp_path / "out", "acme/data")
    assert stored_blobs(local_storage)[sha(weights)] == weights
    assert sum(reads) >= len(weights) and max(reads) <= 1024 * 1024  # never the whole file at once


def test_push_with_progress_bars_on(tmp_path, adapter_folder, make_hub, capsys, local_storage):
    files = adapter_folder(tmp_path / "out")
    before = stored_blobs(local_storage)
    version = make_hub(progress=True).push(tmp_path / "out", "acme/bot", base_model="acme/llama-tiny")
    added = {k: v for k, v in stored_blobs(local_storage).items() if k not in before}
    assert version.number == 1 and added == {sha(d): d for d in files.values()}
    assert "uploading" in capsys.readouterr().err


def test_push_with_job_puts_it_in_the_commit_body(job_inputs, worker, make_hub, proxy):
    job_id = job_inputs.train(output="acme/bot").id
    worker.claim(job_id)
    folder = job_inputs.folder(job_inputs.adapter_files())
    make_hub(token=worker.claims[job_id]["token"]).push(folder, "acme/bot", base_model=f"{BASE}@1", job=job_id)
    (folder / "adapter_config.json").write_bytes(job_inputs.adapter_files(lora_dropout=0.07)["adapter_config.json"])
    make_hub().push(folder, "acme/bot")
    first, second = (json.loads(s.body) for s in proxy.requests("POST", "/api/v1/repos/acme/bot/versions"))
    assert first["job"] == job_id and "job" not in second
    assert [s.status for s in proxy.requests("POST", "/api/v1/repos/acme/bot/versions")] == [201, 201]
