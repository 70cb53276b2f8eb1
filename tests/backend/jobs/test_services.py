"""The job lifecycle through the API: submit, dispatch to Redis, claim, heartbeat, events, finish, cancel, reap."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis
from django.core.management import call_command
from django.utils import timezone

from pefthub_server.core.models import ApiToken
from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.registry.models import Version
from tests.backend.jobs.conftest import claim as _claim
from tests.backend.jobs.conftest import submit as _submit
from tests.backend.jobs.conftest import train_spec as _train_spec
from tests.conftest import _person, api_push, write_json

REDIS_URL = os.environ["CELERY_BROKER_URL"]  # tests/settings.py: PEFTHUB_TEST_REDIS_URL or Redis db 15


def test_submit_pins_inputs_and_enqueues_only_the_id(alice, api, acme_base, acme_data, django_capture_on_commit_callbacks):
    queue = redis.Redis.from_url(REDIS_URL)
    queue.delete("gpu")
    with django_capture_on_commit_callbacks(execute=True):
        response = _submit(api(alice.token))
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["status"] == "queued" and job["queue"] == "gpu" and job["output"] == "acme/bot"
    assert job["inputs"]["base_model"]["number"] == 1 and job["inputs"]["dataset"]["repo"] == "acme/data"
    assert job["spec"]["hyperparameters"]["lora_alpha"] == 8  # defaults resolved (2 * r)
    messages = queue.lrange("gpu", 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == "pefthub.train"
    assert message["headers"]["argsrepr"] == repr([job["id"]])
    queue.delete("gpu")


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (_train_spec(method="fancy"), "method", "fancy"),
        (_train_spec(hyperparameters={"r": 0}), "hyperparameters.r", "r"),
        (_train_spec(hyperparameters={"rank": 8}), "hyperparameters.rank", "rank"),
        (_train_spec(hyperparameters={"learnin_rate": 1e-4}), "hyperparameters.learnin_rate",
         "unknown hyperparameter `learnin_rate`; did you mean `learning_rate`?"),
        (_train_spec(hyperparameters={"target_modules": ["qkv_fused"]}), "hyperparameters.target_modules", "qkv_fused"),
        (_train_spec(dataset="acme/nope"), "dataset", "acme/nope"),
        (_train_spec(base_model="acme/data"), "base_model", "dataset repository"),
        (_train_spec(output="elsewhere/bot"), "output", "elsewhere"),
        (_train_spec(output="acme/DATA"), "output", "acme/data"),
    ],
)
def test_bad_specs_are_400s_naming_the_field(alice, api, acme_base, acme_data, spec, field, words):
    response = _submit(api(alice.token), spec)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["detail"]["field"] == field and words in error["message"], error
    assert not Job.objects.exists()


def test_idempotency_key_returns_the_same_job(alice, api, acme_base, acme_data):
    client = api(alice.token)
    first = _submit(client, HTTP_IDEMPOTENCY_KEY="k-1")
    again = _submit(client, HTTP_IDEMPOTENCY_KEY="k-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and Job.objects.count() == 1
    other = _submit(client, _train_spec(output="acme/bot2"), HTTP_IDEMPOTENCY_KEY="k-1")
    assert other.status_code == 409
    assert _submit(client, HTTP_IDEMPOTENCY_KEY="k-2").status_code == 201


def test_claim_is_atomic_and_a_second_claim_is_refused(alice, api, acme_base, acme_data, worker):
    job = _submit(api(alice.token)).json()
    workers = api(worker)
    claimed = workers.post(f"/api/v1/jobs/{job['id']}/claim", {"worker": "w1"}, format="json")
    assert claimed.status_code == 200 and claimed.json()["attempt"] == 1 and claimed.json()["job"]["status"] == "running"
    second = workers.post(f"/api/v1/jobs/{job['id']}/claim", {"worker": "w2"}, format="json")
    assert second.status_code == 409 and second.json()["error"]["code"] == "conflict"
    # the job token acts as alice and can read the pinned inputs
    job_token = claimed.json()["token"]
    assert api(job_token).get("/api/v1/repos/acme/data/versions/1").status_code == 200
    # neither users nor the worker token may make the job's own calls
    for token in (alice.token, worker):
        assert api(token).post(f"/api/v1/jobs/{job['id']}/heartbeat", {"attempt": 1}, format="json").status_code == 403


def test_events_progress_result_and_one_version_per_job(alice, api, acme_base, acme_data, worker, tiny_adapter):
    job = _submit(api(alice.token)).json()
    claim = _claim(api, worker, job["id"])
    w = api(claim["token"])
    batch = [{"type": "log", "data": {"message": "start"}},
             {"type": "metric", "data": {"step": 1, "total_steps": 2, "loss": 3.5}},
             {"type": "metric", "data": {"step": 2, "total_steps": 2, "loss": 2.5, "epoch": 1.0}}]
    assert w.post(f"/api/v1/jobs/{job['id']}/events", {"attempt": 1, "events": batch}, format="json").json()["last_seq"] == 5
    detail = api(alice.token).get(f"/api/v1/jobs/{job['id']}").json()
    assert detail["progress"] == {"step": 2, "total_steps": 2, "epoch": 1.0} and detail["metrics"] == {"loss": 2.5}
    page = api(alice.token).get(f"/api/v1/jobs/{job['id']}/events", {"after": 2}).json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["next_after"] == 5
    assert [e["type"] for e in page["events"]] == ["log", "metric", "metric"]

    pusher = api(claim["token"])
    api(alice.token).post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter",
                                            "base_model": "acme/llama-tiny"}, format="json")
    first = api_push(pusher, "acme/bot", tiny_adapter[0], job=job["id"])
    assert first.status_code == 201 and first.json()["job"] == job["id"]
    again = api_push(pusher, "acme/bot", tiny_adapter[0], job=job["id"], message="retry")
    assert again.status_code == 200 and again.json()["number"] == first.json()["number"]
    assert Version.objects.filter(job_id=job["id"]).count() == 1
    # another token may not commit the job's result
    assert api_push(api(alice.token), "acme/bot", tiny_adapter[0], job=job["id"]).status_code == 403

    done = w.post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "version": 1}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["result"]["repo"] == "acme/bot" and done.json()["result"]["number"] == 1
    late = w.post(f"/api/v1/jobs/{job['id']}/heartbeat", {"attempt": 1}, format="json")
    assert late.status_code == 401 and "revoked" in late.json()["error"]["message"]  # the job token died with the job


def test_fail_requeues_retryable_until_the_limit(alice, api, acme_base, acme_data, worker, django_capture_on_commit_callbacks):
    job = _submit(api(alice.token), {**_train_spec(), "max_attempts": 2}).json()
    for attempt, expected in ((1, "queued"), (2, "failed")):
        claim = _claim(api, worker, job["id"])
        assert claim["attempt"] == attempt
        with django_capture_on_commit_callbacks(execute=True):
            body = {"attempt": attempt, "code": "worker_error", "message": "CUDA OOM", "retryable": True}
            failed = api(claim["token"]).post(f"/api/v1/jobs/{job['id']}/fail", body, format="json").json()
        assert failed["status"] == expected
    assert failed["error"] == {"code": "worker_error", "message": "CUDA OOM"}
    job2 = _submit(api(alice.token), _train_spec(output="acme/bot2")).json()
    claim = _claim(api, worker, job2["id"])
    body = {"attempt": 1, "code": "dataset_invalid", "message": "train.jsonl line 3: not JSON", "retryable": False}
    assert api(claim["token"]).post(f"/api/v1/jobs/{job2['id']}/fail", body, format="json").json()["status"] == "failed"


def test_cancel_queued_and_running(alice, api, acme_base, acme_data, worker):
    client = api(alice.token)
    queued = _submit(client).json()
    assert client.post(f"/api/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{queued['id']}/cancel").status_code == 409
    running = _submit(client, _train_spec(output="acme/bot2")).json()
    job_client = api(_claim(api, worker, running["id"])["token"])
    assert client.post(f"/api/v1/jobs/{running['id']}/cancel").json()["status"] == "cancel_requested"
    beat = job_client.post(f"/api/v1/jobs/{running['id']}/heartbeat", {"attempt": 1}, format="json").json()
    assert beat["cancel_requested"] is True
    body = {"attempt": 1, "code": "cancelled", "message": "stopped at step 3"}
    assert job_client.post(f"/api/v1/jobs/{running['id']}/fail", body, format="json").json()["status"] == "cancelled"
    assert not Version.objects.filter(job_id=running["id"]).exists()


def test_reaper_requeues_expired_leases_then_fails(alice, api, acme_base, acme_data, worker, django_capture_on_commit_callbacks):
    job = _submit(api(alice.token), {**_train_spec(), "max_attempts": 2}).json()
    for attempt, expected in ((1, "queued"), (2, "failed")):
        claim = _claim(api, worker, job["id"])
        assert claim["attempt"] == attempt
        Job.objects.filter(pk=job["id"]).update(lease_expires_at=timezone.now() - timezone.timedelta(seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            call_command("reap_jobs")
        row = Job.objects.get(pk=job["id"])
        assert row.status == expected
        assert ApiToken.objects.get(pk=row.token_id).revoked_at is not None  # the attempt's job token died with it
    assert row.error["code"] == "lease_expired" and "2 attempts" in row.error["message"]
    reasons = [e.data.get("reason", "") for e in JobEvent.objects.filter(job_id=job["id"], type="status")]
    assert any("re-queued" in r for r in reasons)


def test_heartbeat_extends_the_lease(alice, api, acme_base, acme_data, worker):
    job = _submit(api(alice.token)).json()
    claim = _claim(api, worker, job["id"])
    before = Job.objects.get(pk=job["id"]).lease_expires_at
    time.sleep(0.05)
    api(claim["token"]).post(f"/api/v1/jobs/{job['id']}/heartbeat", {"attempt": 1}, format="json")
    row = Job.objects.get(pk=job["id"])
    assert row.lease_expires_at > before and row.token.expires_at == row.lease_expires_at  # the token lives as the lease
    call_command("reap_jobs")
    assert Job.objects.get(pk=job["id"]).status == "running"


def test_outsider_cannot_see_cancel_or_read_events(alice, carol, api, acme_base, acme_data):
    job = _submit(api(alice.token)).json()
    outsider = api(carol.token)
    for response in (outsider.get(f"/api/v1/jobs/{job['id']}"), outsider.get(f"/api/v1/jobs/{job['id']}/events"),
                     outsider.post(f"/api/v1/jobs/{job['id']}/cancel")):
        assert response.status_code == 404
    assert outsider.get("/api/v1/jobs").json()["count"] == 0
    assert api(alice.token).get("/api/v1/jobs").json()["count"] == 1


def test_cannot_train_on_inputs_the_submitter_cannot_read(carol, api, acme_base, acme_data):
    client = api(carol.token)
    response = _submit(client, _train_spec(output="carol/bot"))
    assert response.status_code == 400 and response.json()["error"]["detail"]["field"] == "base_model"
    assert "not found" in response.json()["error"]["message"]


def test_member_sees_team_jobs_and_read_member_cannot_cancel(alice, bob, api, acme_base, acme_data):
    job = _submit(api(alice.token)).json()
    assert api(bob.token).get(f"/api/v1/jobs/{job['id']}").status_code == 200
    dave = _person("dave", team="acme", role="read")
    assert api(dave.token).post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 403
    assert api(bob.token).post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200


def test_merge_spec_refuses_prompt_tuning_at_submit(alice, api, acme_base, tmp_path):
    folder = tmp_path / "prompt"
    folder.mkdir()
    import struct

    header = json.dumps({"prompt_embeddings": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1024)
    write_json(folder / "adapter_config.json", {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM",
                                                "num_virtual_tokens": 4, "token_dim": 64})
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "prompt", "kind": "adapter", "base_model": "acme/llama-tiny"},
                format="json")
    assert api_push(client, "acme/prompt", folder).status_code == 201
    response = _submit(client, {"type": "merge", "adapters": [{"ref": "acme/prompt", "weight": 1.0}], "output": "acme/merged"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_mergeable"
    assert "PROMPT_TUNING" in response.json()["error"]["message"]


def test_beat_schedules_the_reaper_task(alice, api, acme_base, acme_data, worker):
    from pefthub_server.jobs.tasks import app, reap_jobs

    entry = app.conf.beat_schedule["reap-expired-jobs"]
    assert entry["task"] == "pefthub.reap_jobs" and entry["schedule"] == 1.0  # PEFTHUB_REAP_INTERVAL in tests
    assert app.conf.task_routes["pefthub.reap_jobs"] == {"queue": "hub"}
    job = _submit(api(alice.token), {**_train_spec(), "max_attempts": 1}).json()
    _claim(api, worker, job["id"])
    Job.objects.filter(pk=job["id"]).update(lease_expires_at=timezone.now() - timezone.timedelta(seconds=1))
    assert reap_jobs.run() == {"requeued": 0, "failed": 1, "cancelled": 0, "redispatched": 0}  # the task body beat runs
    assert Job.objects.get(pk=job["id"]).error["code"] == "lease_expired"
