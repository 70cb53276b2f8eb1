"""Queued jobs never wait forever: the reaper sends a job's id again when no worker took it in the grace period.

The queue is the real Redis test database; "lost" is a message deleted from it, as a
Redis restart or flush does.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.jobs.services import jobs_reap
from tests.backend.jobs.conftest import claim, submit

REDIS_URL = os.environ["CELERY_BROKER_URL"]  # tests/settings.py: PEFTHUB_TEST_REDIS_URL or Redis db 15
GRACE = 60


@pytest.fixture
def queue(settings):
    settings.PEFTHUB_REDISPATCH_SECONDS = GRACE
    queue = redis.Redis.from_url(REDIS_URL)
    queue.delete("gpu")
    yield queue
    queue.delete("gpu")


def _sent(queue) -> list[str]:
    return [json.loads(m)["headers"]["argsrepr"] for m in queue.lrange("gpu", 0, -1)]


def _reap(capture, *, after: float = 0) -> int:
    with capture(execute=True):
        return jobs_reap(now=timezone.now() + timedelta(seconds=after))["redispatched"]


def test_a_lost_message_is_sent_again_after_the_grace_period_with_backoff(
        alice, api, acme_base, acme_data, queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(api(alice.token)).json()
    assert _sent(queue) == [repr([job["id"]])]
    queue.delete("gpu")  # the broker lost it
    assert _reap(django_capture_on_commit_callbacks) == 0 and _sent(queue) == []  # within the grace period
    assert _reap(django_capture_on_commit_callbacks, after=GRACE + 1) == 1
    assert _sent(queue) == [repr([job["id"]])]
    row = Job.objects.get(pk=job["id"])
    assert row.status == "queued" and row.dispatches == 2
    log = JobEvent.objects.filter(job_id=job["id"], type="log").last()
    assert "sent it again" in log.data["message"] and log.data["level"] == "warning"
    # a busy queue is not flooded: the next send waits twice as long
    assert _reap(django_capture_on_commit_callbacks, after=GRACE + 1) == 0
    assert _reap(django_capture_on_commit_callbacks, after=2 * GRACE + 1) == 1 and len(_sent(queue)) == 2


def test_only_queued_jobs_are_sent_again(alice, api, acme_base, acme_data, worker, queue,
                                         django_capture_on_commit_callbacks):
    client = api(alice.token)
    running = submit(client).json()
    claim(api, worker, running["id"])
    cancelled = submit(client, {**json.loads(json.dumps(running["spec"])), "output": "acme/bot2"}).json()
    client.post(f"/api/v1/jobs/{cancelled['id']}/cancel")
    Job.objects.filter(pk=running["id"]).update(lease_expires_at=timezone.now() + timedelta(days=1))  # it heartbeats
    queue.delete("gpu")
    assert _reap(django_capture_on_commit_callbacks, after=10 * GRACE) == 0 and _sent(queue) == []


def test_a_duplicate_message_is_harmless_the_second_claim_is_refused(alice, api, acme_base, acme_data, worker, queue,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(api(alice.token)).json()
    assert _reap(django_capture_on_commit_callbacks, after=GRACE + 1) == 1
    assert _sent(queue) == [repr([job["id"]])] * 2  # the first message was only slow, not lost
    assert claim(api, worker, job["id"])["attempt"] == 1
    second = api(worker).post(f"/api/v1/jobs/{job['id']}/claim", {"worker": "w2"}, format="json")
    assert second.status_code == 409  # the worker acks it and moves on (pefthub_worker.runner: "skipped")
