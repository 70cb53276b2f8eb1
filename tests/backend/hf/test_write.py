"""The Hugging Face write API (`/hf`): create_repo, preupload, the LFS batch API, the NDJSON commit, branches
and tags, driven request by request as huggingface_hub sends them (tests/e2e/test_hf_write.py runs the tools).

alice is admin of acme, bob writes in it, carol is in no team.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from pefthub.protocol.limits import MAX_FILES
from pefthub_server.core.errors import HubError
from pefthub_server.hf.views import HfError
from pefthub_server.hf.write import XET_OFF_PATH
from pefthub_server.registry import push
from pefthub_server.registry.blobs import blob_uploaded
from pefthub_server.registry.models import Alias, Blob, Repository, Version
from pefthub_server.registry.storage import get_blob_store
from tests.conftest import _person, file_specs

PICKLE = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def header(summary: str = "a commit", **extra) -> dict:
    return {"key": "header", "value": {"summary": summary, "description": "", **extra}}


def inline(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def lfs_line(path: str, data: bytes) -> dict:
    return {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": sha(data), "size": len(data)}}


def post(client, url: str, body=None, *, raw: bytes | None = None, content_type: str = "application/json"):
    data = raw if raw is not None else json.dumps(body or {}).encode()
    return client.generic("POST", url, data, content_type=content_type)


def commit(client, repo: str, *lines: dict, rev: str = "main", raw: bytes | None = None, query: str = ""):
    return post(client, f"/hf/api/models/{repo}/commit/{rev}{query}", raw=raw if raw is not None else ndjson(*lines),
                content_type="application/x-ndjson")


def lfs_upload(client, repo: str, files: dict[str, bytes]) -> dict:
    """The LFS batch for ``files``, then each PUT it asks for; the batch answer by oid."""
    objects = [{"oid": sha(data), "size": len(data)} for data in files.values()]
    answer = post(client, f"/hf/{repo}.git/info/lfs/objects/batch",
                  {"operation": "upload", "transfers": ["basic", "multipart"], "objects": objects, "hash_algo": "sha256"})
    assert answer.status_code == 200 and answer["Content-Type"] == "application/vnd.git-lfs+json", answer.content
    by_oid = {item["oid"]: item for item in answer.json()["objects"]}
    for data in files.values():
        action = by_oid[sha(data)].get("actions")
        if action:  # huggingface_hub's basic transfer: a PUT with no headers of the action's
            put = client.generic("PUT", action["upload"]["href"].removeprefix("http://testserver"), data)
            assert put.status_code == 201, put.content
    return by_oid


def sdk_push(client, repo: str, folder, **fields):
    """hub.push: negotiate and commit with the same fields, uploading what is missing."""
    specs = file_specs(folder)
    negotiated = client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs, **fields}, format="json")
    if negotiated.status_code != 200:
        return negotiated
    by_sha = {s["sha256"]: folder / s["path"] for s in specs}
    for item in negotiated.json()["missing"]:
        client.generic("PUT", item["upload"]["url"], by_sha[item["sha256"]].read_bytes())
    return client.post(f"/api/v1/repos/{repo}/versions", {"files": specs, **fields}, format="json")


def adapter_files(folder, base: str | None = "acme/llama-tiny") -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    if base is not None:
        config = json.loads(files["adapter_config.json"])
        config["base_model_name_or_path"] = base
        files["adapter_config.json"] = json.dumps(config, indent=2).encode()
    return files


def push_adapter(client, repo: str, files: dict[str, bytes], rev: str = "main"):
    """upload_folder as huggingface_hub does it: weights through LFS, the rest inline."""
    weights = {p: d for p, d in files.items() if p.endswith(".safetensors")}
    lfs_upload(client, repo, weights)
    lines = [inline(p, d) for p, d in files.items() if p not in weights] + [lfs_line(p, d) for p, d in weights.items()]
    return commit(client, repo, header(), *lines, rev=rev)


@pytest.fixture
def hf(api, alice):
    return api(alice.token)


def create(client, name: str, **extra):
    return post(client, "/hf/api/repos/create", {"name": name, "organization": "acme", **extra})


# --- create_repo ------------------------------------------------------------------------------


def test_create_repo_is_private_unless_asked_and_a_second_create_is_a_409_with_its_url(hf, api, carol, alice):
    assert create(hf, "quiet").json()["url"] == "http://testserver/hf/acme/quiet"
    assert create(hf, "loud", private=False).status_code == 200
    assert create(hf, "loud2", visibility="public").status_code == 200
    assert create(hf, "data", type="dataset").json()["url"] == "http://testserver/hf/datasets/acme/data"
    kinds = dict(Repository.objects.values_list("name", "kind"))
    assert kinds == {"quiet": "model", "loud": "model", "loud2": "model", "data": "dataset"}
    visibility = dict(Repository.objects.values_list("name", "visibility"))
    assert (visibility["quiet"], visibility["loud"], visibility["loud2"]) == ("private", "public", "public")

    again = create(hf, "quiet")  # huggingface_hub's exist_ok=True relies on the 409 and reads `url` from it
    assert again.status_code == 409 and again.json()["url"] == "http://testserver/hf/acme/quiet"
    assert "already exists" in again["X-Error-Message"]
    mine = post(hf, "/hf/api/repos/create", {"name": "own"})  # no organization: the caller's namespace
    assert mine.json()["url"] == "http://testserver/hf/alice/own"

    assert create(hf, "s", type="space").status_code == 400
    assert create(api(carol.token), "carols").status_code == 404  # not a member of acme: no more said
    assert create(api(), "anon").status_code == 401
    read_only = create(api(alice.new_token("read")), "ro")
    assert read_only.status_code == 403 and "scope `read`" in read_only.json()["error"]


def test_a_browser_session_cannot_write_through_the_csrf_free_api(client, alice):
    """The /hf API takes tokens only: a logged-in browser tricked into a POST changes nothing."""
    client.force_login(alice.user)
    assert create(client, "csrf").status_code == 401
    assert not Repository.objects.filter(name="csrf").exists()


def test_delete_repo_needs_an_admin_token(hf, api, alice, bob):
    create(hf, "doomed")
    url = "/hf/api/repos/delete"
    body = json.dumps({"name": "doomed", "organization": "acme"}).encode()
    assert api(bob.token).generic("DELETE", url, body, content_type="application/json").status_code == 403
    assert hf.generic("DELETE", url, body, content_type="application/json").status_code == 403  # scope write
    admin = api(alice.new_token("admin"))
    assert admin.generic("DELETE", url, body, content_type="application/json").status_code == 200
    assert not Repository.objects.filter(name="doomed").exists()
    gone = admin.generic("DELETE", url, body, content_type="application/json")
    assert gone.status_code == 404 and gone["X-Error-Code"] == "RepoNotFound"


# --- the first version decides the kind ----------------------------------------------------------


def test_an_empty_model_repository_becomes_an_adapter_by_its_first_version_through_hf_and_sdk(
        hf, alice, acme_base, tiny_adapter, tiny_base):
    folder, _ = tiny_adapter
    create(hf, "by-hf")
    response = push_adapter(hf, "acme/by-hf", adapter_files(folder))
    assert response.status_code == 200, response.content
    repo = Repository.objects.get(name="by-hf")
    assert (repo.kind, repo.base_model.full_name, repo.peft_type) == ("adapter", "acme/llama-tiny", "LORA")
    version = Version.objects.get(repository=repo)
    assert response.json()["commitOid"] == version.digest[:40] and response.json()["pullRequestUrl"] is None

    create(hf, "by-sdk")  # hub.push (negotiate + commit) into the same kind of empty repository
    pushed = sdk_push(hf, "acme/by-sdk", folder, base_model="acme/llama-tiny")
    assert pushed.status_code == 201, pushed.content
    assert Repository.objects.get(name="by-sdk").kind == "adapter"

    create(hf, "full")  # a model's files keep it a model
    assert sdk_push(hf, "acme/full", tiny_base).status_code == 201
    assert Repository.objects.get(name="full").kind == "model"
    # once it has a version its kind is fixed: adapter files are just more files of the model
    assert push_adapter(hf, "acme/full", adapter_files(folder)).status_code == 200
    assert Repository.objects.get(name="full").kind == "model"
    late = sdk_push(hf, "acme/full", folder, kind="adapter", base_model="acme/llama-tiny")
    assert late.status_code == 400
    assert late.json()["error"]["message"] == "`acme/full` is a model repository; this push is an adapter."


def test_an_adapter_base_comes_from_its_config_when_readable_else_a_400_saying_how(
        hf, api, alice, carol, acme_base, tiny_adapter, tiny_base):
    folder, _ = tiny_adapter
    create(hf, "local-base")
    refused = push_adapter(hf, "acme/local-base", adapter_files(folder, base=None))  # names a path on a laptop
    message = refused.json()["error"]
    assert refused.status_code == 400 and str(tiny_base) in message
    assert 'from_pretrained("<namespace>/<base>")' in message
    assert "`pefthub push <adapter folder> acme/local-base --base-model <namespace>/<base>`" in message
    assert not Version.objects.filter(repository__name="local-base").exists()

    # a base carol cannot read is refused in the same words as one that does not exist
    theirs = api(carol.token)
    post(theirs, "/hf/api/repos/create", {"name": "mine"})
    hidden = push_adapter(theirs, "carol/mine", adapter_files(folder, base="acme/llama-tiny"))
    missing = push_adapter(theirs, "carol/mine", adapter_files(folder, base="acme/no-such-base"))
    assert hidden.status_code == missing.status_code == 400
    assert hidden.json()["error"].replace("acme/llama-tiny", "X") == missing.json()["error"].replace("acme/no-such-base", "X")

    # the repository's own base serves when the config names none on the hub
    assert sdk_push(hf, "acme/local-base", folder, base_model="acme/llama-tiny").status_code == 201
    again = push_adapter(hf, "acme/local-base", {**adapter_files(folder, base=None), "notes.md": b"v2\n"})
    assert again.status_code == 200, again.content


# --- preupload ---------------------------------------------------------------------------------


def test_preupload_sends_weights_through_lfs_ignores_training_args_and_refuses_pickles(hf, settings):
    create(hf, "p")
    url = "/hf/api/models/acme/p/preupload/main"

    def item(path: str, size: int, sample: bytes = b"{}") -> dict:
        return {"path": path, "size": size, "sample": base64.b64encode(sample).decode()}

    answer = post(hf, url, {"files": [item("adapter_model.safetensors", 100), item("adapter_config.json", 900),
                                      item("tokenizer.json", 3 * 1024 * 1024), item("training_args.bin", 5000, PICKLE),
                                      item("README.md", 10)]})
    modes = {f["path"]: (f["uploadMode"], f["shouldIgnore"]) for f in answer.json()["files"]}
    assert modes == {"adapter_model.safetensors": ("lfs", False), "adapter_config.json": ("regular", False),
                     "tokenizer.json": ("lfs", False), "training_args.bin": ("regular", True),
                     "README.md": ("regular", False)}

    bin_file = post(hf, url, {"files": [item("optimizer.pt", 10, PICKLE)]})
    assert bin_file.status_code == 400 and "pickle-based PyTorch file" in bin_file["X-Error-Message"]
    disguised = post(hf, url, {"files": [item("notes.txt", 10, PICKLE)]})
    assert disguised.status_code == 400 and "pickle data" in disguised.json()["error"]
    outside = post(hf, url, {"files": [item("../etc/passwd", 10)]})
    assert outside.status_code == 400
    huge = post(hf, url, {"files": [item("a.safetensors", settings.PEFTHUB_MAX_FILE_SIZE + 1)]})
    assert huge.status_code == 413 and "PEFTHUB_MAX_FILE_SIZE" in huge.json()["error"]
    assert post(hf, url, {"files": [item(f"f{i}.json", 1) for i in range(MAX_FILES + 1)]}).status_code == 400


def test_preupload_tells_the_oid_of_weights_already_at_that_path(hf, alice, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    create(hf, "bot")
    files = adapter_files(folder)
    assert push_adapter(hf, "acme/bot", files).status_code == 200
    weights = files["adapter_model.safetensors"]
    answer = post(hf, "/hf/api/models/acme/bot/preupload/main", {"files": [
        {"path": "adapter_model.safetensors", "size": len(weights), "sample": base64.b64encode(weights[:512]).decode()}]})
    assert answer.json()["files"][0]["oid"] == sha(weights)  # huggingface_hub leaves an unchanged file out


# --- the LFS batch API -------------------------------------------------------------------------


def test_lfs_batch_asks_only_for_blobs_the_caller_does_not_possess(hf, api, alice, carol, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    create(hf, "bot")
    weights = adapter_files(folder)["adapter_model.safetensors"]
    first = lfs_upload(hf, "acme/bot", {"w": weights})[sha(weights)]
    assert first["authenticated"] is True and "verify" not in first["actions"]  # a local PUT is verified as it streams
    assert lfs_upload(hf, "acme/bot", {"w": weights})[sha(weights)].get("actions") is None  # alice uploaded it

    # knowing the hash of alice's private weights is not access: carol must send the bytes herself
    theirs = api(carol.token)
    post(theirs, "/hf/api/repos/create", {"name": "mine"})
    answer = post(theirs, "/hf/carol/mine.git/info/lfs/objects/batch",
                  {"operation": "upload", "objects": [{"oid": sha(weights), "size": len(weights)}]})
    assert "upload" in answer.json()["objects"][0]["actions"]
    cited = commit(theirs, "carol/mine", header(), lfs_line("w.safetensors", weights))
    assert cited.status_code == 400 and "neither in a version you can read nor uploaded by you" in cited.json()["error"]
    into_acme = post(theirs, "/hf/acme/bot.git/info/lfs/objects/batch",
                     {"operation": "upload", "objects": [{"oid": sha(weights), "size": len(weights)}]})
    assert into_acme.status_code == 404 and into_acme["X-Error-Code"] == "RepoNotFound"

    download = post(hf, "/hf/acme/bot.git/info/lfs/objects/batch", {"operation": "download", "objects": []})
    assert download.status_code == 400
    bad_oid = post(hf, "/hf/acme/bot.git/info/lfs/objects/batch", {"operation": "upload",
                                                                   "objects": [{"oid": "../x", "size": 1}]})
    assert bad_oid.status_code == 400


def test_s3_upload_targets_take_a_plain_put_and_verify_hashes_what_arrived(hf, alice, s3_storage):
    import requests

    create(hf, "data", type="dataset")
    rows = b'{"text": "a"}\n' * 100
    answer = post(hf, "/hf/datasets/acme/data.git/info/lfs/objects/batch",
                  {"operation": "upload", "objects": [{"oid": sha(rows), "size": len(rows)}]}).json()["objects"][0]
    href, verify = answer["actions"]["upload"]["href"], answer["actions"]["verify"]["href"]
    assert href.startswith(s3_storage[0])  # bytes go straight to S3, to a key of alice's own
    assert requests.put(href, data=rows, timeout=30).status_code == 200  # no headers, as huggingface_hub sends
    assert post(hf, verify.removeprefix("http://testserver"), {"oid": sha(rows), "size": len(rows)}).status_code == 200
    assert get_blob_store().stat(sha(rows)) == len(rows)
    done = post(hf, "/hf/api/datasets/acme/data/commit/main", raw=ndjson(header(), lfs_line("train.jsonl", rows)),
                content_type="application/x-ndjson")
    assert done.status_code == 200, done.content

    wrong = b"not what was announced"
    lie = post(hf, "/hf/datasets/acme/data.git/info/lfs/objects/batch",
               {"operation": "upload", "objects": [{"oid": sha(b"x" * len(wrong)), "size": len(wrong)}]})
    requests.put(lie.json()["objects"][0]["actions"]["upload"]["href"], data=wrong, timeout=30)
    refused = post(hf, verify.removeprefix("http://testserver"), {"oid": sha(b"x" * len(wrong)), "size": len(wrong)})
    assert refused.status_code == 400 and "expected sha256" in refused.json()["error"]


# --- commits -----------------------------------------------------------------------------------


def test_a_commit_is_a_delta_on_main_and_deletions_name_what_exists(hf, alice, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    create(hf, "bot")
    files = adapter_files(folder)
    assert push_adapter(hf, "acme/bot", files).status_code == 200
    added = commit(hf, "acme/bot", header("notes", description="why"), inline("docs/a.md", b"a\n"),
                   inline("docs/b.md", b"b\n"))
    assert added.status_code == 200
    latest = Version.objects.filter(repository__name="bot").order_by("-number").first()
    assert latest.message == "notes\n\nwhy"
    assert sorted(latest.files.values_list("path", flat=True)) == sorted([*files, "docs/a.md", "docs/b.md"])

    assert commit(hf, "acme/bot", header(), {"key": "deletedFile", "value": {"path": "docs/a.md"}}).status_code == 200
    assert commit(hf, "acme/bot", header(), {"key": "deletedFolder", "value": {"path": "docs/"}}).status_code == 200
    latest = Version.objects.filter(repository__name="bot").order_by("-number").first()
    assert sorted(latest.files.values_list("path", flat=True)) == sorted(files)
    missing = commit(hf, "acme/bot", header(), {"key": "deletedFile", "value": {"path": "nope.md"}})
    assert missing.status_code == 404 and missing["X-Error-Code"] == "EntryNotFound"
    assert "A file with this name doesn't exist" in missing.json()["error"]  # huggingface_hub adds its hint to it


def test_commits_to_branches_move_them_tags_do_not_take_commits_and_parents_must_be_current(
        hf, alice, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    create(hf, "bot")
    first = push_adapter(hf, "acme/bot", adapter_files(folder)).json()["commitOid"]
    assert post(hf, "/hf/api/models/acme/bot/branch/dev", {}).status_code == 200
    assert post(hf, "/hf/api/models/acme/bot/tag/main", {"tag": "v1"}).status_code == 200
    refs = dict(Alias.objects.values_list("name", "ref"))
    assert refs == {"dev": "branch", "v1": "tag"}

    on_dev = commit(hf, "acme/bot", header(), inline("dev.md", b"dev\n"), rev="dev")
    assert on_dev.status_code == 200
    assert Alias.objects.get(name="dev").version.digest[:40] == on_dev.json()["commitOid"]
    assert Alias.objects.get(name="v1").version.digest[:40] == first
    on_tag = commit(hf, "acme/bot", header(), inline("x.md", b"x\n"), rev="v1")
    assert on_tag.status_code == 400 and "is a tag" in on_tag.json()["error"]
    nowhere = commit(hf, "acme/bot", header(), inline("x.md", b"x\n"), rev="nope")
    assert nowhere.status_code == 404 and nowhere["X-Error-Code"] == "RevisionNotFound"
    stale = commit(hf, "acme/bot", header(parentCommit=first), inline("x.md", b"x\n"))
    assert stale.status_code == 412
    current = commit(hf, "acme/bot", header(parentCommit=on_dev.json()["commitOid"]), inline("x.md", b"x\n"))
    assert current.status_code == 200
    assert commit(hf, "acme/bot", header(), inline("y.md", b"y\n"), query="?create_pr=1").status_code == 400


def test_commit_bodies_are_bounded_and_read_strictly(hf, alice, acme_base, tiny_adapter, monkeypatch):
    from pefthub_server.hf import commit as commit_module

    create(hf, "bot")
    cases = {
        "not json": ndjson(header()) + b"{nope\n",
        "copy": ndjson(header(), {"key": "copyFile", "value": {"path": "a", "oid": "b"}}),
        "no header": ndjson(inline("a.md", b"a")),
        "two headers": ndjson(header(), header()),
        "bad base64": ndjson(header(), {"key": "file", "value": {"path": "a.md", "content": "!!", "encoding": "base64"}}),
        "twice": ndjson(header(), inline("a.md", b"a"), inline("a.md", b"b")),
        "bad path": ndjson(header(), inline("/etc/passwd", b"a")),
        "bad oid": ndjson(header(), {"key": "lfsFile", "value": {"path": "w.safetensors", "oid": "zz", "size": 1}}),
    }
    for name, body in cases.items():
        response = commit(hf, "acme/bot", raw=body)
        assert response.status_code == 400, (name, response.content)
        assert response.json()["error"], name
    monkeypatch.setattr(commit_module, "MAX_LINES", 3)
    too_many = commit(hf, "acme/bot", raw=ndjson(header(), *[inline(f"{i}.md", b"x") for i in range(4)]))
    assert too_many.status_code == 413


def test_an_inline_pickle_is_refused_before_anything_is_stored(hf, alice):
    create(hf, "bot")
    named = commit(hf, "acme/bot", header(), inline("weights.bin", PICKLE))
    disguised = commit(hf, "acme/bot", header(), inline("notes.txt", PICKLE))
    assert named.status_code == disguised.status_code == 400
    assert "pickle" in named.json()["error"] and "pickle" in disguised.json()["error"]
    assert not Blob.objects.filter(sha256=sha(PICKLE)).exists() and get_blob_store().stat(sha(PICKLE)) is None


def test_outsiders_and_read_tokens_cannot_commit(hf, api, alice, bob, carol, acme_base, tiny_adapter):
    create(hf, "bot")
    create(hf, "open", private=False)
    for repo in ("acme/bot", "acme/open"):
        theirs = commit(api(carol.token), repo, header(), inline("a.md", b"a"))
        if repo == "acme/bot":  # private: not even its existence is told
            assert theirs.status_code == 404 and theirs["X-Error-Code"] == "RepoNotFound"
        else:
            assert theirs.status_code == 403 and "`write` role in `acme`" in theirs.json()["error"]
    dave = _person("dave", team="acme", role="read")  # reads acme, may not write there
    reader = commit(api(dave.token), "acme/bot", header(), inline("a.md", b"a"))
    assert reader.status_code == 403 and "you have `read`" in reader.json()["error"]
    read = commit(api(bob.new_token("read")), "acme/bot", header(), inline("a.md", b"a"))
    assert read.status_code == 403 and "scope `read`" in read.json()["error"]
    assert commit(api(), "acme/open", header(), inline("a.md", b"a")).status_code == 401
    assert not Version.objects.filter(repository__name__in=["bot", "open"]).exists()


# --- branches, tags, Xet ---------------------------------------------------------------------------


def test_branches_and_tags_follow_the_alias_grammar_and_main_is_untouchable(hf, alice, acme_base, tiny_adapter):
    folder, _ = tiny_adapter
    create(hf, "bot")
    assert post(hf, "/hf/api/models/acme/bot/branch/dev", {}).status_code == 400  # no version to start from
    push_adapter(hf, "acme/bot", adapter_files(folder))
    assert post(hf, "/hf/api/models/acme/bot/branch/main", {}).status_code == 400
    assert post(hf, "/hf/api/models/acme/bot/branch/-x", {}).status_code == 400
    assert post(hf, "/hf/api/models/acme/bot/branch/dev", {"startingPoint": "nope"}).status_code == 404
    assert post(hf, "/hf/api/models/acme/bot/branch/dev", {}).status_code == 200
    assert post(hf, "/hf/api/models/acme/bot/branch/dev", {}).status_code == 409  # create_branch(exist_ok=True) relies on it
    assert post(hf, "/hf/api/models/acme/bot/tag/1", {"tag": "dev"}).status_code == 409
    assert post(hf, "/hf/api/models/acme/bot/tag/1", {"tag": "main"}).status_code == 400
    assert hf.delete("/hf/api/models/acme/bot/tag/dev").status_code == 404  # a branch, not a tag
    assert hf.delete("/hf/api/models/acme/bot/branch/dev").status_code == 200
    assert not Alias.objects.filter(name="dev").exists()


def test_xet_token_requests_land_on_a_url_that_says_how_to_turn_xet_off(hf, alice):
    create(hf, "bot")
    response = hf.get("/hf/api/models/acme/bot/xet-write-token/main")
    assert response.status_code == 302 and response["Location"] == f"http://testserver{XET_OFF_PATH}"
    final = hf.get(XET_OFF_PATH)
    assert final.status_code == 400 and "HF_HUB_DISABLE_XET=1" in final.json()["error"]
    assert "set-HF_HUB_DISABLE_XET=1" in XET_OFF_PATH  # hf_xet shows only the URL it failed on


def test_a_commit_built_on_a_revision_that_moved_meanwhile_is_a_412_not_a_lost_file(hf, alice, acme_base, tiny_adapter):
    """The view builds the delta before the repository is locked; version_create re-checks the head under the lock."""
    folder, _ = tiny_adapter
    create(hf, "bot")
    push_adapter(hf, "acme/bot", adapter_files(folder))
    post(hf, "/hf/api/models/acme/bot/branch/dev", {})
    commit(hf, "acme/bot", header(), inline("a.md", b"a\n"), rev="dev")  # moves `dev` and the newest version
    first, second = Version.objects.filter(repository__name="bot").order_by("number")
    target = push.push_target(user=alice.user, namespace="acme", name="bot", create=False)
    files = [{"path": f.path, "sha256": f.blob_id, "size": f.size} for f in first.files.all()] + [
        {"path": "b.md", "sha256": sha(b"b\n"), "size": 2}]
    get_blob_store().save_bytes(sha(b"b\n"), b"b\n")
    blob_uploaded(user_id=alice.user.pk, sha256=sha(b"b\n"), size=2)
    for head in (push.Head(first), push.Head(first, "dev")):
        with pytest.raises(HubError) as refused:
            push.version_create(user=alice.user, target=target, files=files, head=head)
        assert refused.value.status == 412 and refused.value.code == "head_moved"
    assert Version.objects.filter(repository__name="bot").count() == 2
    version, created = push.version_create(user=alice.user, target=target, files=files, head=push.Head(second, "dev"),
                                           aliases=["dev"])
    assert created and Alias.objects.get(name="dev").version == version


def test_a_commit_replaces_files_by_folders_and_back_in_time_linear_in_the_files(hf, alice):
    from time import perf_counter

    from pefthub_server.hf.commit import Commit, manifest
    from pefthub_server.registry.models import VersionFile

    create(hf, "big", type="dataset")
    repo = Repository.objects.get(name="big")
    blob = Blob.objects.create(sha256=sha(b"x"), size=1)
    head = Version.objects.create(repository=repo, number=1, digest="0" * 64)
    paths = ["a", "b/c.md", "b/d.md", "e/f.md", *[f"d{i}/f.md" for i in range(10_000)]]
    VersionFile.objects.bulk_create([VersionFile(version=head, path=p, blob=blob, size=1) for p in paths])

    swap = Commit(inline={"a/x.md": b"x", "b": b"b"}, deleted_folders=["e"])
    assert [f["path"] for f in manifest(swap, head, sizes={})][:3] == ["a/x.md", "b", "d0/f.md"]
    everything = Commit(deleted_folders=[f"d{i}" for i in range(10_000)],
                        inline={f"n{i}/x.md": b"n" for i in range(10_000)})
    started = perf_counter()
    result = manifest(everything, head, sizes={})
    assert perf_counter() - started < 2  # 10,000 deletions against 10,000 files: one pass, not 10^8 comparisons
    assert len(result) == 4 + 10_000
    with pytest.raises(HfError) as missing:
        manifest(Commit(deleted_folders=["nope"]), head, sizes={})
    assert missing.value.code == "EntryNotFound"
