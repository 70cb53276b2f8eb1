"""A job token is not its owner: it reads its job's pinned inputs, pushes its job's result, reports on its job.

Every token here comes from the real claim endpoint. Anything else, even what the job's
owner may do, is a 403 `job_token_refused`; the token dies with the job.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.utils import timezone

from pefthub_server.core.models import ApiToken
from pefthub_server.jobs.models import Job
from pefthub_server.registry.models import Membership, Repository
from tests.backend.jobs.conftest import claim, submit, train_spec
from tests.conftest import api_push, file_specs


def _dataset(client, repo: str, folder, rows: int) -> dict:
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(rows)) + "\n")
    if client.get(f"/api/v1/repos/{repo}").status_code == 404:
        ns, name = repo.split("/")
        client.post("/api/v1/repos", {"namespace": ns, "name": name, "kind": "dataset"}, format="json")
    response = api_push(client, repo, folder)
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def claimed(alice, api, acme_base, acme_data, worker, tmp_path):
    """alice's train job into `acme/bot` (aliases: staging), claimed; the dataset got a version 2 after the submit,
    and alice has a private dataset `acme/secret` the job does not use. Returns (job, claim)."""
    owner = api(alice.token)
    job = submit(owner, train_spec(aliases=["staging"])).json()
    _dataset(owner, "acme/data", tmp_path / "data-v2", rows=9)
    _dataset(owner, "acme/secret", tmp_path / "secret", rows=3)
    owner.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
               format="json")
    return job, claim(api, worker, job["id"])


def _refused(response, status: int = 403) -> None:
    assert response.status_code == status, response.content
    if status == 403:
        assert response.json()["error"]["code"] == "job_token_refused", response.json()


def test_job_token_reads_the_pinned_inputs_and_nothing_else(claimed, api, alice):
    job, c = claimed
    token = api(c["token"])
    data_pin, base_pin = job["inputs"]["dataset"], job["inputs"]["base_model"]
    for path in (f"repos/acme/data/versions/{data_pin['number']}", f"repos/acme/data/versions/{data_pin['digest']}",
                 f"repos/acme/llama-tiny/versions/{base_pin['number']}", "repos/acme/data", "repos/acme/bot"):
        assert token.get(f"/api/v1/{path}").status_code == 200, path
    detail = token.get(f"/api/v1/repos/acme/data/versions/{data_pin['number']}").json()
    assert token.get(detail["files"][0]["url"]).status_code == 200  # the signed download URL
    for path in ("repos/acme/data/versions/latest", "repos/acme/data/versions/2", "repos/acme/secret",
                 "repos/acme/secret/versions/1", "repos/acme/data/versions", "repos/acme/data/aliases", "repos",
                 "whoami", "tokens", "teams", "teams/acme", "jobs", ""):
        _refused(token.get(f"/api/v1/{path}"))
    secret_blob = api(alice.token).get("/api/v1/repos/acme/secret/versions/1").json()["files"][0]["sha256"]
    _refused(token.get(f"/api/v1/blobs/{secret_blob}"))  # owner's read by hash: not for a job token
    _refused(token.get(f"/api/v1/blobs/{secret_blob}", {"sig": "0" * 64, "expires": "9999999999"}))
    hf = token.get("/hf/api/models/acme/llama-tiny")
    assert hf.status_code == 403 and "job token" in hf.json()["error"]


def test_job_token_changes_nothing_outside_its_job(claimed, api, alice, bob, carol):
    job, c = claimed
    token = api(c["token"])
    other = submit(api(alice.token), train_spec(output="acme/bot2")).json()
    tokens_before = ApiToken.objects.count()
    attempts = [
        token.post("/api/v1/tokens", {"name": "forever", "scope": "read"}, format="json"),
        token.delete(f"/api/v1/tokens/{ApiToken.objects.filter(user=alice.user).first().pk}"),
        token.post("/api/v1/teams", {"name": "evil"}, format="json"),
        token.post("/api/v1/teams/acme/members", {"username": "carol", "role": "admin"}, format="json"),
        token.patch(f"/api/v1/teams/acme/members/{bob.username}", {"role": "admin"}, format="json"),
        token.post("/api/v1/repos", {"namespace": "acme", "name": "new", "kind": "dataset"}, format="json"),
        token.patch("/api/v1/repos/acme/data", {"visibility": "public"}, format="json"),
        token.patch("/api/v1/repos/acme/bot", {"visibility": "public"}, format="json"),
        token.delete("/api/v1/repos/acme/secret"),
        token.put("/api/v1/repos/acme/llama-tiny/aliases/prod", {"version": 1}, format="json"),
        token.put("/api/v1/repos/acme/bot/aliases/staging", {"version": 1}, format="json"),
        token.post("/api/v1/jobs", train_spec(output="acme/bot3"), format="json"),
        token.post(f"/api/v1/jobs/{job['id']}/cancel"),
        token.post(f"/api/v1/jobs/{other['id']}/claim", {"worker": "w"}, format="json"),
    ]
    for response in attempts:
        _refused(response)
    assert ApiToken.objects.count() == tokens_before and not Repository.objects.filter(name="new").exists()
    assert Repository.objects.get(name="data").visibility == "private" and Repository.objects.get(name="bot").visibility == "private"
    assert not Membership.objects.filter(user=carol.user).exists() and Membership.objects.get(user=bob.user).role == "write"
    assert not Repository.objects.get(name="llama-tiny").aliases.exists() and Job.objects.get(pk=other["id"]).status == "queued"


def test_job_token_pushes_only_its_result_to_its_output(claimed, api, tiny_adapter):
    job, c = claimed
    token = api(c["token"])
    folder = tiny_adapter[0]
    base = f"acme/llama-tiny@{job['inputs']['base_model']['number']}"
    _refused(token.post("/api/v1/repos/acme/data/uploads", {"files": file_specs(folder)}, format="json"))
    _refused(token.post("/api/v1/repos/acme/bot2/versions", {"files": file_specs(folder), "job": job["id"]}, format="json"))
    refusals = {
        "commits only its job's result": {},
        "only the aliases its job's spec names (staging), not prod": {"aliases": ["staging", "prod"]},
        "only against the job's pinned base": {"base_model": "acme/llama-tiny@latest"},
        "only as a private adapter repository": {"visibility": "public"},
    }
    for words, body in refusals.items():
        response = api_push(token, "acme/bot", folder, **({"job": job["id"]} | body if body else {}))
        assert response.status_code == 403 and words in response.json()["error"]["message"], response.json()
    pushed = api_push(token, "acme/bot", folder, job=job["id"], aliases=["staging"], base_model=base)
    assert pushed.status_code == 201, pushed.content
    assert pushed.json()["job"] == job["id"] and "staging" in pushed.json()["aliases"]


def test_job_token_reports_on_its_own_job_only(claimed, api, alice, worker):
    job, c = claimed
    token = api(c["token"])
    other = submit(api(alice.token), train_spec(output="acme/bot2")).json()
    other_claim = claim(api, worker, other["id"])
    for action, body in (("heartbeat", {"attempt": 1}), ("events", {"attempt": 1, "events": [{"type": "log", "data": {}}]}),
                         ("complete", {"attempt": 1, "version": 1}), ("fail", {"attempt": 1, "code": "x", "message": "x"})):
        _refused(token.post(f"/api/v1/jobs/{other['id']}/{action}", body, format="json"))
    _refused(token.get(f"/api/v1/jobs/{other['id']}"))
    assert token.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
    assert token.post(f"/api/v1/jobs/{job['id']}/heartbeat", {"attempt": 1}, format="json").status_code == 200
    assert token.get(f"/api/v1/jobs/{job['id']}/events").status_code == 200
    assert api(other_claim["token"]).post(f"/api/v1/jobs/{other['id']}/heartbeat", {"attempt": 1},
                                          format="json").status_code == 200


def test_job_token_dies_with_the_attempt(claimed, api, alice, worker, django_capture_on_commit_callbacks):
    job, c = claimed
    row = Job.objects.get(pk=job["id"])
    assert row.token.scope == "job" and row.token.expires_at == row.lease_expires_at  # not days: the lease
    pull = f"/api/v1/repos/acme/data/versions/{job['inputs']['dataset']['number']}"
    assert api(c["token"]).get(pull).status_code == 200
    Job.objects.filter(pk=row.pk).update(lease_expires_at=timezone.now() - timezone.timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        call_command("reap_jobs")  # the worker went silent: re-queued, its token revoked
    assert api(c["token"]).get(pull).status_code == 401
    second = claim(api, worker, job["id"])
    assert second["attempt"] == 2 and api(second["token"]).get(pull).status_code == 200
    assert api(alice.token).post(f"/api/v1/jobs/{job['id']}/cancel").json()["status"] == "cancel_requested"
    assert api(second["token"]).get(pull).status_code == 200  # still running until the worker stops
    body = {"attempt": 2, "code": "cancelled", "message": "cancelled"}
    assert api(second["token"]).post(f"/api/v1/jobs/{job['id']}/fail", body, format="json").json()["status"] == "cancelled"
    gone = api(second["token"]).get(pull)
    assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]


def test_a_job_token_whose_job_ended_is_refused_even_unrevoked(claimed, api):
    job, c = claimed
    Job.objects.filter(pk=job["id"]).update(status="succeeded")  # as if the revocation had been lost
    _refused(api(c["token"]).get(f"/api/v1/repos/acme/data/versions/{job['inputs']['dataset']['number']}"))


def test_job_token_expires_with_a_lapsed_lease(claimed, api):
    job, c = claimed
    ApiToken.objects.filter(job__pk=job["id"]).update(expires_at=timezone.now())
    response = api(c["token"]).post(f"/api/v1/jobs/{job['id']}/heartbeat", {"attempt": 1}, format="json")
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_a_job_token_cannot_cite_its_owners_other_blobs_by_hash(claimed, api, alice):
    """Knowing a sha256 is not access: the owner's private blob is not present to her job's push."""
    job, c = claimed
    token = api(c["token"])
    secret = api(alice.token).get("/api/v1/repos/acme/secret/versions/1").json()["files"][0]
    pinned = api(alice.token).get(f"/api/v1/repos/acme/data/versions/{job['inputs']['dataset']['number']}").json()
    files = [{"path": "cited.jsonl", "sha256": secret["sha256"], "size": secret["size"]},
             {"path": "pinned.jsonl", "sha256": pinned["files"][0]["sha256"], "size": pinned["files"][0]["size"]}]
    plan = token.post("/api/v1/repos/acme/bot/uploads", {"files": files}, format="json").json()
    assert plan["present"] == [pinned["files"][0]["sha256"]]  # an input it reads: present
    assert [m["sha256"] for m in plan["missing"]] == [secret["sha256"]]
    commit = token.post("/api/v1/repos/acme/bot/versions", {"files": files, "job": job["id"]}, format="json")
    assert commit.status_code == 400 and commit.json()["error"]["code"] == "missing_blob", commit.json()


def test_job_token_commits_at_once_only_its_result_as_its_spec_says(claimed, api, tiny_adapter):
    job, c = claimed
    token = api(c["token"])
    folder = tiny_adapter[0]
    specs = file_specs(folder)
    base = f"acme/llama-tiny@{job['inputs']['base_model']['number']}"
    plan = token.post("/api/v1/repos/acme/bot/uploads", {"files": specs}, format="json").json()
    for item in plan["missing"]:  # the job's own upload: possessed from now on
        assert token.generic("PUT", item["upload"]["url"], (folder / next(
            s["path"] for s in specs if s["sha256"] == item["sha256"])).read_bytes()).status_code == 201
    mine = {"job": job["id"]}
    refusals = {
        "commits only its job's result": ({}, {}),
        "only the aliases its job's spec names (staging), not prod": (mine | {"aliases": ["prod"]}, {}),
        "only against the job's pinned base": (mine, {"base_model": "acme/llama-tiny@latest"}),
        # the repository's fields are the negotiation's: one in `commit` neither counts nor hides the real one
        "only as a private adapter repository": (mine | {"visibility": "private"}, {"visibility": "public"}),
    }
    for words, (commit, fields) in refusals.items():
        response = token.post("/api/v1/repos/acme/bot/uploads", {"files": specs, **fields, "commit": commit},
                              format="json")
        assert response.status_code == 403 and words in response.json()["error"]["message"], response.json()
    assert not Repository.objects.get(name="bot").versions.exists()
    done = token.post("/api/v1/repos/acme/bot/uploads", {"files": specs, "base_model": base, "commit": {
        "job": job["id"], "aliases": ["staging"]}}, format="json")
    assert done.status_code == 201, done.content
    version = done.json()["version"]
    assert (version["job"], version["aliases"], done.json()["missing"]) == (job["id"], ["latest", "staging"], [])
