from __future__ import annotations

import json
import re
import sys
import types

import pytest

from pefthub import Conflict, Job, JobCancelled, JobEvent, JobFailed, NotFound, ValidationError, Version

from .fakes import Reply, error

pytestmark = pytest.mark.usefixtures("clock")

TRAIN = {"base_model": "acme/llama-tiny", "dataset": "acme/support-data@2", "output": "acme/support-bot"}


def posts(server):
    return server.requests("POST", "/api/v1/jobs")


# -- submitting -----------------------------------------------------------------------------
def test_train_posts_the_spec_with_an_idempotency_key(make_hub, fake_jobs, server):
    job = make_hub().train(**TRAIN, method="qlora", r=8, target_modules=["q_proj"], aliases="staging",
                           message="first", queue="cpu", max_attempts=2)

    [post] = posts(server)
    assert re.fullmatch(r"[0-9a-f]{32}", post.header("Idempotency-Key"))
    assert json.loads(post.body) == {
        "type": "train", **TRAIN, "method": "qlora", "hyperparameters": {"r": 8, "target_modules": ["q_proj"]},
        "aliases": ["staging"], "message": "first", "queue": "cpu", "max_attempts": 2,
    }
    assert isinstance(job, Job) and job.id in fake_jobs.jobs
    assert (job.type, job.status, job.queue, job.output, job.max_attempts) == ("train", "queued", "cpu",
                                                                               "acme/support-bot", 2)
    assert job.spec["hyperparameters"] == {"r": 8, "target_modules": ["q_proj"]} and not job.done
    assert job.raw["id"] == job.id and job.result is None and job.result_ref is None


def test_a_retried_post_keeps_its_idempotency_key_and_makes_one_job(make_hub, fake_jobs, server, sleeps):
    real = fake_jobs.create
    answers = [error(503, "unavailable", "restarting")]
    server.route("POST", r"/api/v1/jobs", lambda seen, m: answers.pop(0) if answers else real(seen, m))

    job = make_hub().train(**TRAIN, hyperparameters={"r": 4}, epochs=2)

    first, second = posts(server)
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key")
    assert first.body == second.body and len(sleeps) == 1
    assert list(fake_jobs.jobs) == [job.id]
    assert json.loads(second.body)["hyperparameters"] == {"r": 4, "epochs": 2}


def test_each_call_has_its_own_key_unless_given_one(make_hub, fake_jobs, server):
    hub = make_hub()
    a, b = hub.train(**TRAIN), hub.train(**TRAIN)
    assert a.id != b.id
    assert posts(server)[0].header("Idempotency-Key") != posts(server)[1].header("Idempotency-Key")

    c = hub.train(**TRAIN, idempotency_key="nightly-2025-01-01")
    d = hub.train(**TRAIN, idempotency_key="nightly-2025-01-01")
    assert c.id == d.id and posts(server)[-1].header("Idempotency-Key") == "nightly-2025-01-01"
    with pytest.raises(Conflict):  # same key, another body
        hub.train(**TRAIN, r=4, idempotency_key="nightly-2025-01-01")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"method": "adalora"}, "method"),
    ({"r": 0}, "hyperparameters.r"),
    ({"learning_rat": 1e-4}, "hyperparameters.learning_rat"),
    ({"method": "prompt_tuning", "r": 8}, "hyperparameters.r"),
    ({"output": "acme/bot@3"}, "output"),
    ({"dataset": "not a ref"}, "dataset"),
    ({"queue": "tpu"}, "queue"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_train_validates_before_sending_anything(make_hub, fake_jobs, server, kwargs, field):
    with pytest.raises(ValidationError) as info:
        make_hub().train(**{**TRAIN, **kwargs})
    assert info.value.code == "validation_error" and info.value.detail == {"field": field}
    assert server.requests() == []


@pytest.mark.parametrize(("adapters", "kwargs", "expected"), [
    ("acme/bot@3", {}, [{"ref": "acme/bot@3", "weight": 1.0}]),
    (["acme/bot@3", "acme/sql@1"], {"weights": [0.7, 0.3]},
     [{"ref": "acme/bot@3", "weight": 0.7}, {"ref": "acme/sql@1", "weight": 0.3}]),
    (["acme/bot@3", "acme/sql@1"], {}, [{"ref": "acme/bot@3", "weight": 1.0}, {"ref": "acme/sql@1", "weight": 1.0}]),
    ([("acme/bot@3", 1), ("acme/sql@1", 0.5)], {},
     [{"ref": "acme/bot@3", "weight": 1}, {"ref": "acme/sql@1", "weight": 0.5}]),
    ([{"ref": "acme/bot@3", "weight": 2.0}], {}, [{"ref": "acme/bot@3", "weight": 2.0}]),
])
def test_merge_builds_the_spec_from_each_input_form(make_hub, fake_jobs, server, adapters, kwargs, expected):
    job = make_hub().merge(adapters, output="acme/bot-merged", **kwargs)
    [post] = posts(server)
    assert re.fullmatch(r"[0-9a-f]{32}", post.header("Idempotency-Key"))
    assert json.loads(post.body) == {"type": "merge", "adapters": expected, "output": "acme/bot-merged",
                                     "combination": "linear", "density": 0.5, "dtype": "float32",
                                     "aliases": [], "message": ""}
    assert job.type == "merge" and job.queue == "cpu"


def test_merge_options_and_refusals(make_hub, fake_jobs, server):
    hub = make_hub()
    hub.merge(["acme/a@1", "acme/b@1"], output="acme/m", combination="ties", density=0.2, dtype="bfloat16",
              aliases=["prod"], message="m", queue="gpu")
    body = json.loads(posts(server)[0].body)
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
    assert len(posts(server)) == 1


# -- reading ----------------------------------------------------------------------------------
def test_jobs_pages_and_filters_and_job_reads_one(make_hub, fake_jobs, server):
    ids = [fake_jobs.add(output="acme/bot" if i % 2 else "acme/other", status="queued")["id"] for i in range(5)]
    hub = make_hub()
    assert [j.id for j in hub.jobs()] == ids[::-1]  # newest first, over three pages
    assert [j.id for j in hub.jobs(output="acme/bot")] == [ids[3], ids[1]]
    assert server.requests("GET", "/api/v1/jobs")[-1].query["output"] == "acme/bot"
    assert hub.job(ids[2]).id == ids[2]
    with pytest.raises(NotFound):
        hub.job("f" * 32)


def test_events_page_with_after(make_hub, fake_jobs, server):
    job_id = fake_jobs.add(status="succeeded")["id"]
    for step in range(1, 6):
        fake_jobs.emit(job_id, "metric", {"step": step, "total_steps": 5, "loss": 3.0 - step / 10})
    job = make_hub().job(job_id)

    events = list(job.events(limit=2))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0] == JobEvent(seq=1, type="metric", attempt=1, time="2025-01-01T12:00:00Z",
                                 data={"step": 1, "total_steps": 5, "loss": 2.9})
    afters = [s.query["after"] for s in server.requests("GET", f"/api/v1/jobs/{job_id}/events")]
    assert afters == ["0", "2", "4", "5"]
    assert [e.seq for e in job.events(after=3)] == [4, 5]


def test_follow_polls_until_the_job_ended_and_no_events_remain(make_hub, fake_jobs, clock):
    job_id = fake_jobs.add(status="running")["id"]
    fake_jobs.emit(job_id, "log", {"message": "loading", "level": "info"})
    job = make_hub().job(job_id)
    assert [e.type for e in job.events()] == ["log"]  # without follow: what is there now
    fake_jobs.ticks = [  # one per events request
        lambda: None,
        lambda: None,  # nothing new yet: the follower sleeps
        lambda: fake_jobs.emit(job_id, "metric", {"step": 1}),
        fake_jobs.update(job_id, status="succeeded"),
    ]
    assert [(e.seq, e.type) for e in job.events(1, follow=True, poll_interval=0.5)] == [(2, "metric"), (3, "status")]
    assert clock.sleeps == [0.5, 0.5]


def _running_then(fake_jobs, final: dict) -> str:
    job_id = fake_jobs.add(status="queued", output="acme/bot")["id"]
    fake_jobs.ticks = [
        lambda: None,  # the test's hub.job()
        fake_jobs.update(job_id, status="running", attempt=1, progress={"step": 0, "total_steps": 4}),
        fake_jobs.update(job_id, progress={"step": 2, "total_steps": 4}, metrics={"loss": 2.5}),
        fake_jobs.update(job_id, **final),
    ]
    return job_id


def test_wait_returns_the_succeeded_job_and_its_result(make_hub, fake_hub, fake_jobs, server, clock, capsys):
    fake_hub.add_version("acme/bot", {"adapter_config.json": b"{}"})
    v = fake_hub.add_version("acme/bot", {"adapter_config.json": b'{"r": 8}'})
    job_id = _running_then(fake_jobs, {"status": "succeeded", "progress": {"step": 4, "total_steps": 4},
                                       "result": {"repo": "acme/bot", "number": 2, "digest": v["digest"]}})
    job = make_hub().job(job_id)

    assert job.wait(poll_interval=2, progress=True) is job
    assert job.status == "succeeded" and job.done and clock.sleeps == [2, 2]
    assert "4/4" in capsys.readouterr().err  # the bar: step/total_steps
    assert job.result_ref == "acme/bot@2"
    result = job.result
    assert isinstance(result, Version) and (result.ref, result.digest) == ("acme/bot@2", v["digest"])
    before = len(server.requests())
    assert job.result is result and len(server.requests()) == before  # fetched once


def test_wait_raises_job_failed_with_the_workers_error(make_hub, fake_jobs):
    job_id = _running_then(fake_jobs, {"status": "failed",
                                       "error": {"code": "dataset_invalid", "message": "line 7: missing `completion`"}})
    with pytest.raises(JobFailed) as info:
        make_hub().job(job_id).wait()
    exc = info.value
    assert (exc.code, exc.message) == ("dataset_invalid", "line 7: missing `completion`")
    assert exc.job.status == "failed" and exc.job.id == job_id and exc.job.result is None
    assert "line 7: missing `completion`" in str(exc) and job_id in str(exc)


def test_wait_raises_job_cancelled(make_hub, fake_jobs):
    job_id = _running_then(fake_jobs, {"status": "cancelled"})
    with pytest.raises(JobCancelled) as info:
        make_hub().job(job_id).wait()
    assert info.value.job.status == "cancelled"


def test_wait_times_out_and_leaves_the_job_alone(make_hub, fake_jobs, clock):
    job_id = fake_jobs.add(status="running")["id"]
    job = make_hub().job(job_id)
    with pytest.raises(TimeoutError, match="still running after 5s"):
        job.wait(timeout=5, poll_interval=2)
    assert clock.sleeps == [2, 2, 1]
    assert fake_jobs.jobs[job_id]["status"] == "running"


def test_cancel(make_hub, fake_jobs):
    hub = make_hub()
    queued = hub.job(fake_jobs.add(status="queued")["id"])
    assert queued.cancel() is queued and queued.status == "cancelled"
    running = hub.job(fake_jobs.add(status="running")["id"])
    assert running.cancel().status == "cancel_requested" and not running.done
    with pytest.raises(Conflict):
        queued.cancel()


# -- the rest of the client -----------------------------------------------------------------------
def test_push_with_job_puts_it_in_the_commit_body(tmp_path, make_hub, server):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    hub = make_hub()
    hub.push(tmp_path / "out", "acme/bot", job="5f0c" * 8)
    (tmp_path / "out" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    hub.push(tmp_path / "out", "acme/bot")
    first, second = (json.loads(s.body) for s in server.requests("POST", "/api/v1/repos/acme/bot/versions"))
    assert first["job"] == "5f0c" * 8 and "job" not in second


def test_request_is_a_raw_authenticated_call(make_hub, server):
    server.route("POST", r"/api/v1/jobs/(?P<id>\w+)/claim", lambda seen, m: Reply(200, {
        "job": m["id"], "worker": json.loads(seen.body)["worker"], "auth": seen.header("Authorization"),
        "x": seen.header("X-Extra"), "q": seen.query}))
    hub = make_hub()
    out = hub.request("post", "/jobs/abc/claim", json={"worker": "h:1"}, params={"v": 1}, headers={"X-Extra": "y"})
    assert out == {"job": "abc", "worker": "h:1", "auth": "Bearer tok-alice", "x": "y", "q": {"v": "1"}}
    with pytest.raises(NotFound):
        hub.request("GET", "/nowhere")


def test_load_names_the_extra_when_ml_packages_are_missing(make_hub, monkeypatch, server):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=re.escape("pefthub[load]")):
        make_hub().load("acme/bot")
    assert server.requests() == []


def test_load_puts_the_adapter_on_its_pinned_base(make_hub, fake_hub, monkeypatch):
    base = fake_hub.add_version("acme/llama-tiny", {"config.json": b"{}", "model.safetensors": b"w"}, kind="model")
    fake_hub.add_version("acme/bot", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"a"})
    real_json = fake_hub._version_json

    def with_base(repo_id, v, **kw):
        out = real_json(repo_id, v, **kw)
        if repo_id == "acme/bot":
            out["base_model"] = {"repo": "acme/llama-tiny", "number": 1, "digest": base["digest"]}
        return out

    monkeypatch.setattr(fake_hub, "_version_json", with_base)
    calls: list[tuple] = []
    auto = types.SimpleNamespace(from_pretrained=lambda path, **kw: calls.append(("base", path, kw)) or "MODEL")
    peft_model = types.SimpleNamespace(from_pretrained=lambda model, path: calls.append(("peft", model, path)) or "PEFT")
    monkeypatch.setitem(sys.modules, "transformers",
                        types.SimpleNamespace(__version__="5.1.0", AutoModelForCausalLM=auto))
    monkeypatch.setitem(sys.modules, "peft", types.SimpleNamespace(PeftModel=peft_model))
    hub = make_hub()

    assert hub.load("acme/bot", torch_dtype="bfloat16", device_map="cpu") == "PEFT"
    base_dir = hub.cache.snapshot_dir(base["digest"].split(":")[1])
    adapter_dir = hub.cache.snapshot_dir(fake_hub.versions["acme/bot"][0]["digest"].split(":")[1])
    assert calls == [("base", str(base_dir), {"dtype": "bfloat16", "device_map": "cpu"}),
                     ("peft", "MODEL", str(adapter_dir))]
    calls.clear()
    assert hub.load("acme/llama-tiny") == "MODEL" and calls == [("base", str(base_dir), {})]
    fake_hub.add_version("acme/data", {"train.jsonl": b"{}\n"}, kind="dataset")
    with pytest.raises(ValidationError, match="only adapters and models"):
        hub.load("acme/data")
