"""Jobs from the client (``hub.train``, ``hub.merge``, ``hub.jobs``, ``Job.events``, ``wait``, ``cancel``)
against the real hub, through the proxy.

The tests play the worker through the hub's worker API (``state.Worker``); ``proxy.before``
runs the worker's next step just before a poll reaches the hub, so each poll sees the job
one step further on.
"""

from __future__ import annotations

import json
import re

import pytest

from pefthub import Conflict, Job, JobCancelled, JobEvent, JobFailed, NotFound, ValidationError, Version

from .proxy import error
from .state import EVENT_TIME, POLL

pytestmark = pytest.mark.usefixtures("clock")

TRAIN = {"base_model": "acme/llama-tiny", "dataset": "acme/support-data@2", "output": "acme/support-bot"}


def posts(proxy):
    return proxy.requests("POST", "/api/v1/jobs")


# -- submitting -----------------------------------------------------------------------------
def test_train_posts_the_spec_with_an_idempotency_key(make_hub, job_inputs, proxy):
    job = make_hub().train(**TRAIN, method="qlora", r=8, target_modules=["q_proj"], aliases="staging",
                           message="first", queue="cpu", max_attempts=2)

    [post] = posts(proxy)
    assert re.fullmatch(r"[0-9a-f]{32}", post.header("Idempotency-Key"))
    assert json.loads(post.body) == {
        "type": "train", **TRAIN, "method": "qlora", "hyperparameters": {"r": 8, "target_modules": ["q_proj"]},
        "aliases": ["staging"], "message": "first", "queue": "cpu", "max_attempts": 2,
    }
    assert isinstance(job, Job) and [j.id for j in job_inputs.hub.jobs()] == [job.id]
    assert (job.type, job.status, job.queue, job.output, job.max_attempts) == ("train", "queued", "cpu",
                                                                               "acme/support-bot", 2)
    # the hub fills in every default; what was asked for is in it
    assert job.spec["hyperparameters"].items() >= {"r": 8, "target_modules": ["q_proj"]}.items() and not job.done
    assert job.raw["id"] == job.id and job.result is None and job.result_ref is None


def test_a_retried_post_keeps_its_idempotency_key_and_makes_one_job(make_hub, job_inputs, proxy, sleeps):
    # the hub makes the job, but its answer is lost on the way back
    proxy.reply("POST", "/api/v1/jobs", error(503, "unavailable", "restarting"), forward=True)

    job = make_hub().train(**TRAIN, hyperparameters={"r": 4}, epochs=2)

    first, second = posts(proxy)
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key")
    assert first.body == second.body and len(sleeps) == 1
    assert [j.id for j in job_inputs.hub.jobs()] == [job.id] and second.status == 200  # the same job, again
    assert json.loads(second.body)["hyperparameters"] == {"r": 4, "epochs": 2}


def test_each_call_has_its_own_key_unless_given_one(make_hub, job_inputs, proxy):
    hub = make_hub()
    a, b = hub.train(**TRAIN), hub.train(**TRAIN)
    assert a.id != b.id
    assert posts(proxy)[0].header("Idempotency-Key") != posts(proxy)[1].header("Idempotency-Key")

    c = hub.train(**TRAIN, idempotency_key="nightly-2025-01-01")
    d = hub.train(**TRAIN, idempotency_key="nightly-2025-01-01")
    assert c.id == d.id and posts(proxy)[-1].header("Idempotency-Key") == "nightly-2025-01-01"
    with pytest.raises(Conflict):  # same key, another body
        hub.train(**TRAIN, r=4, idempotency_key="nightly-2025-01-01")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"method": "adalora"}, "method"),
    ({"r": 0}, "hyperparameters.r"),
    ({"learning_rat": 1e-4}, "hyperparameters.learning_rat"),
    ({"method": "prompt_tuning", "r": 8}, "hyperparameters.r"),
    ({"output": "acme/bot@3"}, "output"),
    ({"dataset": "not a ref"}, "dataset"),
    ({"continue_from": "acme/bot@"}, "continue_from"),
    ({"queue": "tpu"}, "queue"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_train_validates_before_sending_anything(make_hub, proxy, kwargs, field):
    with pytest.raises(ValidationError) as info:
        make_hub().train(**{**TRAIN, **kwargs})
    assert info.value.code == "validation_error" and info.value.detail == {"field": field}
    assert proxy.requests() == []


@pytest.mark.parametrize(("refs", "kwargs", "expected"), [
    ("acme/bot@3", {}, [{"ref": "acme/bot@3", "weight": 1.0}]),
    (["acme/bot@3", "acme/sql@1"], {"weights": [0.7, 0.3]},
     [{"ref": "acme/bot@3", "weight": 0.7}, {"ref": "acme/sql@1", "weight": 0.3}]),
    (["acme/bot@3", "acme/sql@1"], {}, [{"ref": "acme/bot@3", "weight": 1.0}, {"ref": "acme/sql@1", "weight": 1.0}]),
    ([("acme/bot@3", 1), ("acme/sql@1", 0.5)], {},
     [{"ref": "acme/bot@3", "weight": 1}, {"ref": "acme/sql@1", "weight": 0.5}]),
    ([{"ref": "acme/bot@3", "weight": 2.0}], {}, [{"ref": "acme/bot@3", "weight": 2.0}]),
])
@pytest.mark.usefixtures("adapters")
def test_merge_builds_the_spec_from_each_input_form(make_hub, proxy, refs, kwargs, expected):
    job = make_hub().merge(refs, output="acme/bot-merged", **kwargs)
    [post] = posts(proxy)
    assert re.fullmatch(r"[0-9a-f]{32}", post.header("Idempotency-Key"))
    assert json.loads(post.body) == {"type": "merge", "adapters": expected, "output": "acme/bot-merged",
                                     "combination": "linear", "density": 0.5, "dtype": "float32",
                                     "aliases": [], "message": ""}
    assert job.type == "merge" and job.queue == "cpu"


@pytest.mark.usefixtures("adapters")
def test_merge_options_and_refusals(make_hub, proxy):
    hub = make_hub()
    hub.merge(["acme/bot@3", "acme/sql@1"], output="acme/m", combination="ties", density=0.2, dtype="bfloat16",
              aliases=["prod"], message="m", queue="gpu")
    body = json.loads(posts(proxy)[0].body)
    assert (body["combination"], body["density"], body["dtype"], body["aliases"], body["queue"]) == (
        "ties", 0.2, "bfloat16", ["prod"], "gpu")
    bad = [
        ({"weights": [1.0]}, "weights"),                       # two adapters, one weight
        ({"combination": "linear", "density": 0.3}, "density"),  # density only for ties/dare
        ({"dtype": "int8"}, "dtype"),
    ]
    for kwargs, field in bad:
        with pytest.raises(ValidationError) as info:
            hub.merge(["acme/a@1", "acme/b@1"], output="acme/m", **kwargs)
        assert info.value.detail == {"field": field}
    with pytest.raises(ValidationError):
        hub.merge([("acme/a@1", 0.5)], output="acme/m", weights=[0.5])  # weights twice
    with pytest.raises(ValidationError):
        hub.merge([], output="acme/m")
    assert len(posts(proxy)) == 1


# -- reading ----------------------------------------------------------------------------------
def test_jobs_pages_and_filters_and_job_reads_one(make_hub, job_inputs, proxy, monkeypatch):
    from pefthub_server.core.pagination import Pagination

    monkeypatch.setattr(Pagination, "page_size", 2)  # a hub serving pages of 2: five jobs take three
    ids = [job_inputs.train(output="acme/bot" if i % 2 else "acme/other").id for i in range(5)]
    hub = make_hub()
    assert [j.id for j in hub.jobs()] == ids[::-1]  # newest first, over three pages
    assert len(proxy.requests("GET", "/api/v1/jobs")) == 3
    assert [j.id for j in hub.jobs(output="acme/bot")] == [ids[3], ids[1]]
    assert proxy.requests("GET", "/api/v1/jobs")[-1].query["output"] == "acme/bot"
    assert hub.job(ids[2]).id == ids[2]
    with pytest.raises(NotFound):
        hub.job("f" * 32)


def test_events_page_with_after(make_hub, job_inputs, worker, proxy):
    job_id = job_inputs.train().id
    worker.claim(job_id)
    for step in range(1, 4):
        worker.event(job_id, "metric", step=step, total_steps=3, loss=3.0 - step / 10)
    job = make_hub().job(job_id)

    events = list(job.events(limit=2))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]  # queued and running (the hub's), then the worker's three
    assert (events[0].type, events[0].attempt, events[0].data) == ("status", 0, {"status": "queued"})
    assert events[2] == JobEvent(seq=3, type="metric", attempt=1, time=EVENT_TIME,
                                 data={"step": 1, "total_steps": 3, "loss": 2.9})
    afters = [s.query["after"] for s in proxy.requests("GET", f"/api/v1/jobs/{job_id}/events")]
    assert afters == ["0", "2", "4", "5"]
    assert [e.seq for e in job.events(after=3)] == [4, 5]


def test_follow_polls_until_the_job_ended_and_no_events_remain(make_hub, job_inputs, worker, proxy, clock):
    job_id = job_inputs.train(output="acme/bot").id
    worker.claim(job_id)
    worker.event(job_id, "log", message="loading", level="info")
    result = job_inputs.folder(job_inputs.adapter_files())
    job = make_hub().job(job_id)
    assert [e.type for e in job.events()] == ["status", "status", "log"]  # without follow: what is there now
    proxy.before("GET", POLL,  # one step per events request
                 lambda: None,
                 lambda: None,  # nothing new yet: the follower sleeps
                 lambda: worker.event(job_id, "metric", step=1),
                 lambda: worker.succeed(job_id, result))
    assert [(e.seq, e.type) for e in job.events(3, follow=True, poll_interval=0.5)] == [
        (4, "metric"), (5, "artifact"), (6, "status")]
    assert clock.sleeps == [0.5, 0.5]


def _running_then(proxy, worker, job_id: str, final) -> None:
    """The job, polled: queued (the test's hub.job()), running at step 0/4, at step 2/4, then ``final()``."""
    proxy.before("GET", POLL,
                 lambda: None,
                 lambda: (worker.claim(job_id), worker.heartbeat(job_id, step=0, total_steps=4)),
                 lambda: worker.event(job_id, "metric", step=2, total_steps=4, loss=2.5),
                 final)


def test_wait_returns_the_succeeded_job_and_its_result(make_hub, job_inputs, worker, proxy, clock, capsys):
    job_inputs.adapter("acme/bot", 1)
    job_id = job_inputs.train(output="acme/bot").id
    folder = job_inputs.folder(job_inputs.adapter_files(variant=2))
    pushed: list[Version] = []

    def succeed():
        worker.event(job_id, "metric", step=4, total_steps=4)
        pushed.append(worker.succeed(job_id, folder))

    _running_then(proxy, worker, job_id, succeed)
    job = make_hub().job(job_id)

    assert job.wait(poll_interval=2, progress=True) is job
    assert job.status == "succeeded" and job.done and clock.sleeps == [2, 2]
    assert "4/4" in capsys.readouterr().err  # the bar: step/total_steps
    assert job.result_ref == "acme/bot@2"
    result = job.result
    assert isinstance(result, Version) and (result.ref, result.digest) == ("acme/bot@2", pushed[0].digest)
    before = len(proxy.requests())
    assert job.result is result and len(proxy.requests()) == before  # fetched once


def test_wait_raises_job_failed_with_the_workers_error(make_hub, job_inputs, worker, proxy):
    job_id = job_inputs.train(output="acme/bot").id
    _running_then(proxy, worker, job_id, lambda: worker.fail(job_id, "dataset_invalid", "line 7: missing `completion`"))
    with pytest.raises(JobFailed) as info:
        make_hub().job(job_id).wait()
    exc = info.value
    assert (exc.code, exc.message) == ("dataset_invalid", "line 7: missing `completion`")
    assert exc.job.status == "failed" and exc.job.id == job_id and exc.job.result is None
    assert "line 7: missing `completion`" in str(exc) and job_id in str(exc)


def test_wait_raises_job_cancelled(make_hub, job_inputs, worker, proxy):
    job_id = job_inputs.train(output="acme/bot").id

    def cancelled():  # alice asks, the worker stops
        job_inputs.hub.job(job_id).cancel()
        worker.fail(job_id, "cancelled", "stopped on request")

    _running_then(proxy, worker, job_id, cancelled)
    with pytest.raises(JobCancelled) as info:
        make_hub().job(job_id).wait()
    assert info.value.job.status == "cancelled"


def test_wait_times_out_and_leaves_the_job_alone(make_hub, job_inputs, worker, clock):
    job_id = job_inputs.train().id
    worker.claim(job_id)
    job = make_hub().job(job_id)
    with pytest.raises(TimeoutError, match="still running after 5s"):
        job.wait(timeout=5, poll_interval=2)
    assert clock.sleeps == [2, 2, 1]
    assert job_inputs.hub.job(job_id).status == "running"


def test_cancel(make_hub, job_inputs, worker):
    hub = make_hub()
    queued = hub.job(job_inputs.train().id)
    assert queued.cancel() is queued and queued.status == "cancelled"
    running_id = job_inputs.train().id
    worker.claim(running_id)
    running = hub.job(running_id)
    assert running.cancel().status == "cancel_requested" and not running.done
    with pytest.raises(Conflict):
        queued.cancel()
