"""The worker client against a live hub: typed claims and heartbeats, events in batches the hub accepts,
a refused claim as ClaimRefused and every call of an attempt that lost the job as LeaseLost; the worker
token only claims, the claim's job token makes the job's calls.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
import redis

from examples import tiny
from pefthub.errors import PermissionDenied, ValidationError
from pefthub.protocol.limits import MAX_EVENTS_PER_BATCH
from pefthub_server.jobs.models import Job, JobEvent
from pefthub_worker.client import ClaimRefused, JobClient, LeaseLost, WorkerClient
from tests.conftest import worker_token

REDIS_URL = os.environ["CELERY_BROKER_URL"]  # tests/settings.py: PEFTHUB_TEST_REDIS_URL or Redis db 15


@pytest.fixture
def job(alice, hub_for, tiny_base, tmp_path):
    """alice's train job, queued; no worker runs here, so the test plays the worker."""
    hub = hub_for(alice)
    hub.push(tiny_base, "acme/llama-tiny")
    hub.push(tiny.make_dataset(tmp_path / "train.jsonl", rows=8), "acme/data")
    yield hub.train(base_model="acme/llama-tiny", dataset="acme/data", output="acme/bot", max_steps=1)
    redis.Redis.from_url(REDIS_URL).delete("gpu")  # the job's queue messages: no worker will take them


@pytest.fixture
def worker(transactional_db, open_hub, live_server) -> WorkerClient:
    return WorkerClient(open_hub(url=live_server.url, token=worker_token()))


@pytest.fixture
def claimed(job, worker):
    """(claim, the job's client with its job token), closed after the test."""
    claim = worker.claim(job.id, "node-1")
    with worker.job_client(claim) as client:
        yield claim, client


def test_claim_is_typed_and_a_second_claim_is_refused(job, worker):
    claim = worker.claim(job.id, "node-1")
    assert claim.job["id"] == job.id and claim.job["type"] == "train" and claim.attempt == 1
    assert claim.lease_seconds == 4 and claim.heartbeat_seconds == 1.0  # tests/settings.py: a 4 s lease
    with pytest.raises(ClaimRefused) as refused:
        worker.claim(job.id, "node-2")
    assert refused.value.status == 409 and "not queued" in refused.value.message
    assert Job.objects.get(pk=job.id).worker == "node-1"
    pin = claim.job["inputs"]["dataset"]
    with worker.job_client(claim) as client:  # the job token reads the pinned inputs
        assert (client.hub.pull(f"acme/data@{pin['digest']}") / "train.jsonl").is_file()
        with pytest.raises(PermissionDenied):  # ... and only as pinned
            client.hub.pull("acme/data")
    with pytest.raises(PermissionDenied):  # the worker token only claims
        JobClient(worker.hub).heartbeat(job.id, claim.attempt)


def test_heartbeat_extends_the_lease_and_carries_a_cancel_request(job, claimed):
    claim, client = claimed
    beat = client.heartbeat(job.id, claim.attempt, progress={"step": 3})
    assert beat.cancel_requested is False and beat.lease_expires_at > datetime.now(timezone.utc)
    assert Job.objects.get(pk=job.id).progress["step"] == 3
    job.cancel()
    assert client.heartbeat(job.id, claim.attempt).cancel_requested is True
    assert client.fail(job.id, claim.attempt, "cancelled", "cancelled")["status"] == "cancelled"


def test_events_are_posted_in_batches_the_hub_accepts(job, claimed):
    claim, client = claimed
    count = MAX_EVENTS_PER_BATCH + 1  # one request too many for a single batch
    events = [{"type": "metric", "data": {"step": i, "loss": 1.0 / i}} for i in range(1, count + 1)]
    last = client.post_events(job.id, claim.attempt, events)
    metrics = list(JobEvent.objects.filter(job_id=job.id, type="metric").order_by("seq"))
    assert [e.data["step"] for e in metrics] == list(range(1, count + 1))
    assert last == metrics[-1].seq and Job.objects.get(pk=job.id).progress["step"] == count


def test_every_call_of_a_lost_attempt_raises_lease_lost(job, claimed, worker):
    claim, client = claimed
    with pytest.raises(ValidationError):  # not a lease problem: no result version was pushed
        client.complete(job.id, claim.attempt, 1)
    requeued = client.fail(job.id, claim.attempt, "worker_error", "out of memory", retryable=True)
    assert requeued["status"] == "queued"
    calls = {
        "heartbeat": lambda: client.heartbeat(job.id, claim.attempt),
        "events": lambda: client.post_events(job.id, claim.attempt, [{"type": "log", "data": {"message": "x"}}]),
        "complete": lambda: client.complete(job.id, claim.attempt, 1),
        "fail": lambda: client.fail(job.id, claim.attempt, "worker_error", "again"),
    }
    for name, call in calls.items():  # the attempt's job token was revoked with it
        with pytest.raises(LeaseLost) as lost:
            call()
        assert lost.value.status == 401 and "revoked" in lost.value.message, name
    second = worker.claim(job.id, "node-2")  # the job is someone else's to take
    assert second.attempt == 2
    with worker.job_client(second) as stale:  # a live token but an old attempt: the server's lease_lost
        with pytest.raises(LeaseLost) as lost:
            stale.heartbeat(job.id, claim.attempt)
        assert lost.value.code == "lease_lost" and f"Attempt {claim.attempt}" in lost.value.message
