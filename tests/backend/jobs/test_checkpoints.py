"""Job checkpoints through the API: recorded by the current attempt's token from verified blobs, read by the
owner and the job's token, handed to the next attempt at its claim, pruned to the newest three, promoted to a version.

Every token comes from the real claim endpoint; uploads go to the URLs the negotiation hands out.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from pefthub_server.jobs.models import Job, JobCheckpoint, JobEvent
from pefthub_server.registry.blobs import blobs_collect
from pefthub_server.registry.models import Blob, BlobUpload, Version
from tests.backend.jobs.conftest import claim, submit, train_spec
from tests.conftest import api_push, file_specs


@pytest.fixture
def running(alice, api, acme_base, acme_data, worker):
    """alice's train job into `acme/bot`, claimed: (job id, claim answer)."""
    job = submit(api(alice.token), train_spec()).json()
    return job["id"], claim(api, worker, job["id"])


def _state(folder, step: int, tiny_adapter_folder):
    """A checkpoint folder: the adapter (as save_pretrained wrote it) and a state file unique to ``step``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((tiny_adapter_folder / name).read_bytes())
    (folder / "trainer_state.json").write_text(json.dumps({"format": 1, "loop": {"step": step}}))
    return folder


def _record(client, job_id: str, attempt: int, step: int, folder, **extra):
    """Negotiate, upload what is missing, record; the record's response."""
    specs = file_specs(folder)
    negotiated = client.post(f"/api/v1/jobs/{job_id}/checkpoints/uploads", {"attempt": attempt, "files": specs},
                             format="json")
    assert negotiated.status_code == 200, negotiated.content
    by_sha = {s["sha256"]: folder / s["path"] for s in specs}
    for item in negotiated.json()["missing"]:
        put = client.generic("PUT", item["upload"]["url"], by_sha[item["sha256"]].read_bytes(),
                             content_type="application/octet-stream")
        assert put.status_code == 201, put.content
    return client.post(f"/api/v1/jobs/{job_id}/checkpoints",
                       {"attempt": attempt, "step": step, "files": specs, "metrics": {"loss": 1.0 / step}, **extra},
                       format="json")


def test_a_checkpoint_is_recorded_listed_downloaded_and_handed_to_the_next_attempt(running, api, alice, worker,
                                                                                      tiny_adapter, tmp_path, settings):
    job_id, first = running
    token = api(first["token"])
    assert first["checkpoint"] is None
    recorded = _record(token, job_id, 1, 4, _state(tmp_path / "c4", 4, tiny_adapter[0]))
    assert recorded.status_code == 201, recorded.content
    assert recorded.json()["step"] == 4 and recorded.json()["attempt"] == 1 and recorded.json()["metrics"] == {"loss": 0.25}
    event = JobEvent.objects.filter(job_id=job_id, type="checkpoint").get()
    assert event.data == {"step": 4, "attempt": 1, "metrics": {"loss": 0.25}} and event.attempt == 1

    listed = api(alice.token).get(f"/api/v1/jobs/{job_id[:12]}/checkpoints").json()
    assert [(c["step"], c["attempt"]) for c in listed] == [(4, 1)]
    detail = api(alice.token).get(f"/api/v1/jobs/{job_id}/checkpoints/4").json()
    files = {f["path"]: f for f in detail["files"]}
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"}
    got = api().get(files["trainer_state.json"]["url"])  # a signed URL: no token needed
    assert json.loads(b"".join(got.streaming_content)) == {"format": 1, "loop": {"step": 4}}

    # the lease runs out; the next attempt's claim names the checkpoint and its token reads it
    settings.PEFTHUB_JOB_LEASE_SECONDS = 0
    api(first["token"]).post(f"/api/v1/jobs/{job_id}/heartbeat", {"attempt": 1}, format="json")
    call_command("reap_jobs")
    assert Job.objects.get(pk=job_id).status == "queued"
    settings.PEFTHUB_JOB_LEASE_SECONDS = 3600
    second = claim(api, worker, job_id)
    assert second["attempt"] == 2 and second["checkpoint"]["step"] == 4 and second["checkpoint"]["attempt"] == 1
    assert api(second["token"]).get(f"/api/v1/jobs/{job_id}/checkpoints/4").status_code == 200
    # the first attempt's token is dead: it can neither read nor write
    stale = _record_raw(api(first["token"]), job_id, 1, 8, files)
    assert stale.status_code == 401
    assert api(first["token"]).get(f"/api/v1/jobs/{job_id}/checkpoints/4").status_code == 401
    # the new attempt's token cites the earlier attempt's blobs without uploading them again
    again = api(second["token"]).post(f"/api/v1/jobs/{job_id}/checkpoints/uploads",
                                      {"attempt": 2, "files": _specs(files)}, format="json").json()
    assert again["missing"] == [] and len(again["present"]) == 3
    # ...but must send the attempt it is: attempt 1's number is fenced off
    fenced = _record_raw(api(second["token"]), job_id, 1, 8, files)
    assert fenced.status_code == 409 and fenced.json()["error"]["code"] == "lease_lost"
    assert _record_raw(api(second["token"]), job_id, 2, 8, files).status_code == 201


def _specs(files: dict) -> list[dict]:
    return [{k: f[k] for k in ("path", "sha256", "size")} for f in files.values()]


def _record_raw(client, job_id, attempt, step, files: dict):
    return client.post(f"/api/v1/jobs/{job_id}/checkpoints", {"attempt": attempt, "step": step, "files": _specs(files)},
                       format="json")


def test_a_job_keeps_its_newest_three_and_gc_keeps_their_blobs(running, api, tiny_adapter, tmp_path):
    job_id, first = running
    token = api(first["token"])
    for step in (2, 4, 6, 8):
        assert _record(token, job_id, 1, step, _state(tmp_path / f"c{step}", step, tiny_adapter[0])).status_code == 201
    assert list(JobCheckpoint.objects.filter(job_id=job_id).values_list("step", flat=True)) == [8, 6, 4]
    assert JobEvent.objects.filter(job_id=job_id, type="checkpoint").count() == 4
    # a checkpoint at a step recorded already replaces it (a retried upload)
    assert _record(token, job_id, 1, 8, _state(tmp_path / "c8", 8, tiny_adapter[0])).status_code == 201
    assert JobCheckpoint.objects.filter(job_id=job_id).count() == 3

    state_sha = {step: hashlib.sha256(json.dumps({"format": 1, "loop": {"step": step}}).encode()).hexdigest()
                 for step in (2, 4)}
    BlobUpload.objects.all().update(created_at=timezone.now() - timedelta(days=2))
    Blob.objects.all().update(created_at=timezone.now() - timedelta(days=2))
    blobs_collect(older_than=timedelta(hours=1))
    assert not Blob.objects.filter(sha256=state_sha[2]).exists()  # pruned with step 2's checkpoint
    assert Blob.objects.filter(sha256=state_sha[4]).exists()  # step 4 is kept, and so are its bytes
    assert api().get(f"/api/v1/jobs/{job_id}/checkpoints/4").status_code == 404


def test_a_checkpoint_cites_only_blobs_the_job_possesses(running, api, alice, carol, tmp_path):
    job_id, first = running
    # carol's private blob: the hub holds it, the job does not possess it
    folder = tmp_path / "carol"
    folder.mkdir()
    (folder / "diary.jsonl").write_text('{"text": "dear diary"}\n')
    client = api(carol.token)
    client.post("/api/v1/repos", {"namespace": "carol", "name": "diary", "kind": "dataset"}, format="json")
    assert api_push(client, "carol/diary", folder).status_code == 201
    diary = file_specs(folder)[0]
    files = [{"path": "adapter_config.json", **{k: diary[k] for k in ("sha256", "size")}},
             {"path": "adapter_model.safetensors", **{k: diary[k] for k in ("sha256", "size")}}]
    negotiated = api(first["token"]).post(f"/api/v1/jobs/{job_id}/checkpoints/uploads",
                                          {"attempt": 1, "files": files}, format="json").json()
    assert [m["sha256"] for m in negotiated["missing"]] == [diary["sha256"]] and negotiated["present"] == []
    refused = api(first["token"]).post(f"/api/v1/jobs/{job_id}/checkpoints", {"attempt": 1, "step": 1, "files": files},
                                       format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "missing_blob"
    assert not JobCheckpoint.objects.exists()

    no_adapter = api(first["token"]).post(f"/api/v1/jobs/{job_id}/checkpoints",
                                          {"attempt": 1, "step": 1, "files": files[:1]}, format="json")
    assert no_adapter.status_code == 400 and "adapter_model.safetensors" in no_adapter.json()["error"]["message"]
    pickled = api(first["token"]).post(f"/api/v1/jobs/{job_id}/checkpoints/uploads", {"attempt": 1, "files": [
        *files, {"path": "optimizer.pt", "sha256": "0" * 64, "size": 3}]}, format="json")
    assert pickled.status_code == 400 and "safetensors" in pickled.json()["error"]["message"]
    # a user token records nothing, even the owner's
    assert api(alice.token).post(f"/api/v1/jobs/{job_id}/checkpoints", {"attempt": 1, "step": 1, "files": files},
                                 format="json").status_code == 403


def test_who_may_read_and_promote(running, api, alice, bob, carol, acme_data, worker, tiny_adapter, tmp_path):
    job_id, first = running
    assert _record(api(first["token"]), job_id, 1, 3, _state(tmp_path / "c3", 3, tiny_adapter[0])).status_code == 201
    other = claim(api, worker, submit(api(alice.token), train_spec(output="acme/other")).json()["id"])

    assert api(carol.token).get(f"/api/v1/jobs/{job_id}/checkpoints").status_code == 404
    assert api(carol.token).get(f"/api/v1/jobs/{job_id}/checkpoints/3").status_code == 404
    assert api(bob.token).get(f"/api/v1/jobs/{job_id}/checkpoints").status_code == 200  # the team sees the job
    refused = api(bob.token).get(f"/api/v1/jobs/{job_id}/checkpoints/3")  # but not its files
    assert refused.status_code == 403 and "promote" in refused.json()["error"]["message"]
    assert api(other["token"]).get(f"/api/v1/jobs/{job_id}/checkpoints/3").status_code == 403
    assert api(other["token"]).get(f"/api/v1/jobs/{job_id}/checkpoints").status_code == 403
    assert _record_raw(api(other["token"]), job_id, 1, 5, {}).status_code == 403
    missing = api(alice.token).get(f"/api/v1/jobs/{job_id}/checkpoints/2")
    assert missing.status_code == 404 and missing.json()["error"]["detail"] == {"steps": [3]}

    promote = f"/api/v1/jobs/{job_id}/checkpoints/3/promote"
    assert api(carol.token).post(promote, {"output": "carol/stolen"}, format="json").status_code == 404
    assert api(other["token"]).post(promote, {"output": "acme/bot"}, format="json").status_code == 403
    promoted = api(bob.token).post(promote, {"output": "acme/early-bot", "aliases": ["candidate"]}, format="json")
    assert promoted.status_code == 201, promoted.content
    version = Version.objects.get(repository__name="early-bot")
    assert version.number == 1 and version.job_id is None  # the job's one result is still to come
    assert sorted(f.path for f in version.files.all()) == ["adapter_config.json", "adapter_model.safetensors"]
    lineage = version.metadata["lineage"]
    assert lineage["job"] == job_id and lineage["checkpoint_step"] == 3 and lineage["attempt"] == 1
    assert lineage["base_model"]["repo"] == "acme/llama-tiny" and version.metadata["metrics"] == {"loss": 1 / 3}
    assert version.base_version.repository.full_name == "acme/llama-tiny" and version.repository.kind == "adapter"
    assert version.adapter_config["peft_type"] == "LORA" and "candidate" in promoted.json()["aliases"]
    # the same files again: nothing new
    again = api(alice.token).post(promote, {"output": "acme/early-bot"}, format="json")
    assert again.status_code == 200 and again.json()["number"] == 1


def test_only_a_train_job_saves_checkpoints(alice, api, acme_base, worker, tiny_adapter):
    owner = api(alice.token)
    owner.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
               format="json")
    assert api_push(owner, "acme/bot", tiny_adapter[0]).status_code == 201
    job = owner.post("/api/v1/jobs", {"type": "merge", "adapters": ["acme/bot@1"], "output": "acme/merged"},
                     format="json").json()
    token = api(claim(api, worker, job["id"])["token"])
    body = {"attempt": 1, "step": 1, "files": file_specs(tiny_adapter[0])}
    for route in ("checkpoints/uploads", "checkpoints"):
        refused = token.post(f"/api/v1/jobs/{job['id']}/{route}", body, format="json")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_checkpoint", refused.content
        assert "only train jobs save checkpoints" in refused.json()["error"]["message"]
    assert not JobCheckpoint.objects.exists()


def test_checkpoint_uploads_prove_nothing_to_a_push(running, api, alice, worker, tiny_adapter, tmp_path):
    """Bytes uploaded for a checkpoint are the job's checkpoint's: the owner's own push, and another job of the
    owner, cite them in vain (missing, then `missing_blob`); the job's next checkpoint cites them freely."""
    job_id, first = running
    token = api(first["token"])
    folder = _state(tmp_path / "c2", 2, tiny_adapter[0])
    specs = file_specs(folder)
    negotiated = token.post(f"/api/v1/jobs/{job_id}/checkpoints/uploads", {"attempt": 1, "files": specs},
                            format="json").json()
    by_sha = {s["sha256"]: (folder / s["path"]).read_bytes() for s in specs}
    assert negotiated["missing"]  # the trainer state at least: bytes the hub never saw
    for item in negotiated["missing"]:
        assert "purpose=checkpoint" in item["upload"]["url"]
        put = token.generic("PUT", item["upload"]["url"], by_sha[item["sha256"]], content_type="application/octet-stream")
        assert put.status_code == 201, put.content
        # the same URL without its purpose is a push's, which its signature does not allow
        bare = item["upload"]["url"].replace("&purpose=checkpoint", "").replace("purpose=checkpoint&", "")
        assert token.generic("PUT", bare, b"x", content_type="application/octet-stream").status_code == 403
    recorded = token.post(f"/api/v1/jobs/{job_id}/checkpoints", {"attempt": 1, "step": 2, "files": specs},
                          format="json")
    assert recorded.status_code == 201, recorded.content
    state = next(s for s in specs if s["path"] == "trainer_state.json")
    assert BlobUpload.objects.filter(blob_id=state["sha256"], checkpoint=True).count() == 1
    assert not BlobUpload.objects.filter(blob_id=state["sha256"], checkpoint=False).exists()

    cited = [{"path": "state.json", "sha256": state["sha256"], "size": state["size"]}]
    other = claim(api, worker, submit(api(alice.token), train_spec(output="acme/other")).json()["id"])
    for client, repo in ((api(alice.token), "acme/data"), (api(other["token"]), "acme/other")):
        body = {"files": cited, "kind": "adapter", "base_model": "acme/llama-tiny@1"} if repo == "acme/other" \
            else {"files": cited}
        plan = client.post(f"/api/v1/repos/{repo}/uploads", body, format="json")
        assert plan.status_code == 200, plan.content
        assert [m["sha256"] for m in plan.json()["missing"]] == [state["sha256"]] and plan.json()["present"] == []
        commit = client.post(f"/api/v1/repos/{repo}/versions",
                             {**body, **({"job": other["job"]["id"]} if repo == "acme/other" else {})}, format="json")
        assert commit.status_code == 400 and commit.json()["error"]["code"] == "missing_blob", commit.content

    again = token.post(f"/api/v1/jobs/{job_id}/checkpoints/uploads", {"attempt": 1, "files": specs}, format="json")
    assert again.json()["missing"] == []


def test_on_s3_a_checkpoint_upload_is_staged_apart_from_a_push(s3_storage, alice):
    """moto's server: a presigned checkpoint PUT lands where only a checkpoint's acceptance looks."""
    from pefthub_server.registry.blobs import upload_accept
    from pefthub_server.registry.storage import get_blob_store

    data = b'{"format": 1, "loop": {"step": 7}}'
    sha = hashlib.sha256(data).hexdigest()
    upload = get_blob_store().upload_target(sha, len(data), user_id=alice.user.pk, base_url="http://unused",
                                            checkpoint=True)
    assert requests.put(upload["url"], data=data, headers=upload["headers"], timeout=30).status_code == 200
    assert not upload_accept(user_id=alice.user.pk, sha256=sha, size=len(data))  # a push finds nothing staged
    assert upload_accept(user_id=alice.user.pk, sha256=sha, size=len(data), checkpoint=True)
    assert list(BlobUpload.objects.filter(blob_id=sha).values_list("checkpoint", flat=True)) == [True]
    assert get_blob_store().read_range(sha, 0, len(data)) == data
