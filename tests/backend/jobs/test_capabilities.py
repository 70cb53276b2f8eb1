"""Routing by capability: a job states its needs, workers say what they can run, and a job no connected
worker can run waits (with the reason) instead of failing, until one that can says hello.

The queue is the real Redis test database: the tests read which queue each job's id was sent to.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from pefthub.protocol.capabilities import MERGE_RAM_MARGIN, direct_queue
from pefthub_server.jobs.models import Job, JobEvent, Worker
from pefthub_server.jobs.services import jobs_reap
from pefthub_server.registry.models import VersionFile
from tests.backend.jobs.conftest import submit, train_spec
from tests.conftest import api_push

REDIS_URL = os.environ["CELERY_BROKER_URL"]
CPU_ONLY = {"cuda": False, "gpu_count": 0, "gpu_memory": [], "bitsandbytes": False, "torch": "2.13.0",
            "ram_bytes": 64 * 1024**3, "queues": ["gpu"]}
CUDA = {**CPU_ONLY, "cuda": True, "gpu_count": 1, "gpu_memory": [80 * 1024**3], "bitsandbytes": True}
QLORA = train_spec(method="qlora")


@pytest.fixture
def broker():
    queue = redis.Redis.from_url(REDIS_URL)
    names = ["gpu", "cpu", direct_queue("cpu-node"), direct_queue("cuda-node"), direct_queue("other-cuda")]
    queue.delete(*names)
    yield lambda name: [json.loads(m)["headers"]["argsrepr"] for m in queue.lrange(name, 0, -1)]
    queue.delete(*names)


@pytest.fixture
def run_commits(django_capture_on_commit_callbacks):
    """Call ``fn(...)`` and run what it sends on commit (the queue messages)."""
    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)
    return run


def _hello(api, worker, name, capabilities):
    return api(worker).post("/api/v1/workers/hello", {"worker": name, "capabilities": capabilities}, format="json")


def _claim(api, worker, job_id, name, capabilities):
    return api(worker).post(f"/api/v1/jobs/{job_id}/claim", {"worker": name, "capabilities": capabilities}, format="json")


def test_a_qlora_job_waits_for_cuda_and_runs_when_a_cuda_worker_says_hello(
        alice, api, acme_base, acme_data, worker, broker, run_commits):
    assert run_commits(_hello, api, worker, "cpu-node", CPU_ONLY).status_code == 200
    job = run_commits(submit, api(alice.token), QLORA).json()
    assert job["needs"] == {"cuda": True, "bitsandbytes": True}
    assert job["status"] == "queued" and job["waiting_for"] == "a worker with CUDA and bitsandbytes"
    assert broker("gpu") == []  # not sent: the only worker there would refuse it
    shown = api(alice.token).get(f"/api/v1/jobs/{job['id']}").json()
    assert shown["waiting_for"] == "a worker with CUDA and bitsandbytes" and shown["queue_position"] == 1

    refused = _claim(api, worker, job["id"], "cpu-node", CPU_ONLY)  # a stray message: refused, no attempt used
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "needs_unmet"
    assert "CUDA" in refused.json()["error"]["message"] and "cpu-node" in refused.json()["error"]["message"]
    row = Job.objects.get(pk=job["id"])
    assert row.status == "queued" and row.attempt == 0

    reply = run_commits(_hello, api, worker, "cuda-node", {**CUDA, "queues": ["gpu", "cpu"]}).json()
    assert reply["sent"] == 1 and reply["hello_seconds"] == 20  # PEFTHUB_WORKER_PRESENCE_SECONDS 60 / 3
    assert broker(direct_queue("cuda-node")) == [repr([job["id"]])] and broker("gpu") == []
    assert api(alice.token).get(f"/api/v1/jobs/{job['id']}").json()["waiting_for"] is None
    claimed = _claim(api, worker, job["id"], "cuda-node", CUDA)
    assert claimed.status_code == 200 and claimed.json()["job"]["worker"] == "cuda-node"
    statuses = [(e.data["status"], e.data.get("waiting_for")) for e in JobEvent.objects.filter(job_id=job["id"], type="status")]
    assert statuses == [("queued", "a worker with CUDA and bitsandbytes"), ("running", None)]  # said once


def test_with_capable_and_incapable_workers_a_job_goes_to_a_capable_ones_queue(
        alice, api, acme_base, acme_data, worker, broker, run_commits):
    run_commits(_hello, api, worker, "cpu-node", CPU_ONLY)
    run_commits(_hello, api, worker, "cuda-node", CUDA)
    job = run_commits(submit, api(alice.token), QLORA).json()
    assert job["waiting_for"] is None
    assert broker(direct_queue("cuda-node")) == [repr([job["id"]])] and broker("gpu") == []
    lora = run_commits(submit, api(alice.token), train_spec(output="acme/bot2")).json()
    assert lora["needs"] == {} and broker("gpu") == [repr([lora["id"]])]  # no needs: the shared queue
    # when every worker on the queue can run it, it goes to the shared queue
    Worker.objects.filter(name="cpu-node").update(last_seen=timezone.now() - timedelta(seconds=61))
    again = run_commits(submit, api(alice.token), train_spec(method="qlora", output="acme/bot3")).json()
    assert sorted(broker("gpu")) == sorted([repr([lora["id"]]), repr([again["id"]])])


def test_a_claim_without_capabilities_runs_jobs_without_needs_only(
        alice, api, acme_base, acme_data, worker, broker, run_commits):
    run_commits(_hello, api, worker, "cuda-node", CUDA)
    qlora = run_commits(submit, api(alice.token), QLORA).json()
    assert broker("gpu") == [repr([qlora["id"]])]  # every worker that said hello can run it
    refused = run_commits(lambda: api(worker).post(f"/api/v1/jobs/{qlora['id']}/claim", {"worker": "old"}, format="json"))
    assert refused.status_code == 409 and refused.json()["error"]["detail"]["missing"] == ["CUDA", "bitsandbytes"]
    # the worker that never said hello also consumes the shared queue: the job goes to the capable one's own queue
    assert broker("gpu") == [repr([qlora["id"]])] and broker(direct_queue("cuda-node")) == [repr([qlora["id"]])]
    lora = run_commits(submit, api(alice.token), train_spec(output="acme/bot2")).json()
    assert api(worker).post(f"/api/v1/jobs/{lora['id']}/claim", {"worker": "old"}, format="json").status_code == 200


def test_bad_capabilities_are_400s_naming_the_key(api, worker):
    response = _hello(api, worker, "w", {**CPU_ONLY, "cuda": "yes"})
    assert response.status_code == 400 and "capabilities.cuda" in response.json()["error"]["message"]
    response = _hello(api, worker, "w", {"gpus": 1})
    assert response.status_code == 400 and "capabilities.gpus is unknown" in response.json()["error"]["message"]
    response = _hello(api, worker, "w", {"queues": ["gpu", "tpu"]})
    assert response.status_code == 400 and "'tpu'" in response.json()["error"]["message"]


def test_only_worker_tokens_say_hello(api, alice, carol, worker):
    assert _hello(api, worker, "w", CPU_ONLY).status_code == 200
    for token in (alice.token, carol.token):
        assert _hello(api, token, "w", CPU_ONLY).status_code == 403
    assert api().post("/api/v1/workers/hello", {"worker": "w", "capabilities": {}}, format="json").status_code == 401


def test_a_merge_needs_ram_for_one_shard_of_its_base(alice, api, acme_base, tiny_adapter, worker, run_commits):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
                format="json")
    assert api_push(client, "acme/bot", tiny_adapter[0]).status_code == 201
    shard = max(VersionFile.objects.filter(version__repository__name="llama-tiny", path__endswith=".safetensors")
                .values_list("size", flat=True))
    job = run_commits(submit, client, {"type": "merge", "adapters": ["acme/bot"], "output": "acme/merged"}).json()
    assert job["needs"] == {"ram_bytes": 2 * shard + MERGE_RAM_MARGIN}
    small = {**CPU_ONLY, "queues": ["cpu"], "ram_bytes": 256 * 1024**2}
    refused = _claim(api, worker, job["id"], "small-node", small)
    assert refused.status_code == 409 and refused.json()["error"]["detail"]["missing"] == ["0.5 GiB of RAM"]
    assert _claim(api, worker, job["id"], "cpu-node", {**CPU_ONLY, "queues": ["cpu"]}).status_code == 200


def test_the_reaper_sends_a_waiting_job_once_a_capable_worker_is_connected(
        alice, api, acme_base, acme_data, worker, broker, run_commits, settings):
    settings.PEFTHUB_REDISPATCH_SECONDS = 60
    job = run_commits(submit, api(alice.token), QLORA).json()
    assert job["waiting_for"] == "a worker with CUDA and bitsandbytes"  # no worker at all: it waits
    later = timezone.now() + timedelta(seconds=61)
    assert run_commits(jobs_reap, now=later)["redispatched"] == 0 and broker("gpu") == []  # still no one
    # a CUDA node claimed another job (a claim counts as a hello) but its hello about this one was lost
    Worker.objects.create(name="cuda-node", capabilities=CUDA, last_seen=timezone.now())
    assert run_commits(jobs_reap, now=later + timedelta(seconds=121))["redispatched"] == 1
    assert broker("gpu") == [repr([job["id"]])]
    assert Job.objects.get(pk=job["id"]).waiting_for == ""


def test_queue_position_and_depth_by_order_of_entry_in_one_query(
        alice, api, acme_base, acme_data, worker, run_commits, django_assert_max_num_queries):
    client = api(alice.token)
    ids = [run_commits(submit, client, train_spec(output=f"acme/bot{i}")).json()["id"] for i in range(4)]
    merge_free = run_commits(submit, client, train_spec(output="acme/cpu-bot", queue="cpu")).json()
    assert merge_free["queue_position"] == 1 and merge_free["queue_depth"] == 1
    api(worker).post(f"/api/v1/jobs/{ids[0]}/claim", {"worker": "w"}, format="json")
    places = {j["id"]: (j["queue_position"], j["queue_depth"]) for j in client.get("/api/v1/jobs").json()["results"]}
    assert places[ids[0]] == (None, None)  # running
    assert [places[i] for i in ids[1:]] == [(1, 3), (2, 3), (3, 3)]
    with django_assert_max_num_queries(6) as counted:
        client.get("/api/v1/jobs")
    before = len(counted)
    for i in range(10):
        run_commits(submit, client, train_spec(output=f"acme/more{i}"))
    with django_assert_max_num_queries(before):  # the page's places come in one query, however many jobs
        client.get("/api/v1/jobs")
