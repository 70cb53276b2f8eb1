"""Jobs end to end: a live hub, Redis, and real `pefthub-worker` processes training with peft.

The worker is a separate process (Celery, solo pool) that reaches the hub over HTTP,
exactly as a GPU node would; the tests kill it with SIGKILL, cancel its job, and check
what lands in the registry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import torch
from django.core.management import call_command

from examples import tiny
from pefthub.errors import JobCancelled, JobFailed
from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.registry.models import Version
from pefthub_worker.training import Callbacks

REDIS_URL = os.environ["CELERY_BROKER_URL"]  # tests/settings.py: PEFTHUB_TEST_REDIS_URL or Redis db 15
FAST = {"max_steps": 30, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 64, "r": 8}


@pytest.fixture
def start_worker(live_server, tmp_path, db):
    from tests.conftest import worker_token

    redis.Redis.from_url(REDIS_URL).flushdb()
    token = worker_token()
    procs = []

    def start(name: str = "w") -> subprocess.Popen:
        env = {**os.environ, "PEFTHUB_URL": live_server.url, "PEFTHUB_TOKEN": token, "CELERY_BROKER_URL": REDIS_URL,
               "PEFTHUB_CACHE": str(tmp_path / f"worker-cache-{name}"), "PEFTHUB_DISABLE_PROGRESS_BARS": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        log = open(tmp_path / f"worker-{name}.log", "wb")  # noqa: SIM115 - the child writes to it until killed
        proc = subprocess.Popen([sys.executable, "-m", "pefthub_worker.cli", "-Q", "gpu,cpu", "--hostname", f"{name}@test"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def inputs(alice, hub_for, tiny_base, tmp_path):
    """alice's tiny base and a prompt/completion dataset, pushed."""
    hub = hub_for(alice)
    hub.push(tiny_base, "acme/llama-tiny")
    hub.push(tiny.make_dataset(tmp_path / "train.jsonl", rows=64), "acme/support-data")
    return hub


def _wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _losses(job_id) -> list[float]:
    return [e.data["loss"] for e in JobEvent.objects.filter(job_id=job_id, type="metric").order_by("seq") if "loss" in e.data]


def test_train_then_merge_end_to_end(inputs, start_worker, tiny_base):
    start_worker()
    hub = inputs
    job = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot", method="lora",
                    aliases=["staging"], **FAST)
    done = job.wait(timeout=180)
    assert done.status == "succeeded" and done.attempt == 1
    losses = _losses(job.id)
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses  # nats, well above noise
    version = done.result
    assert version.ref == "acme/bot@1" and "staging" in version.aliases
    lineage = version.metadata["lineage"]
    assert lineage["job"] == job.id and lineage["method"] == "lora" and lineage["base_model"]["number"] == 1
    assert lineage["dataset"]["repo"] == "acme/support-data" and lineage["hyperparameters"]["r"] == 8

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path, adapter_path = hub.pull("acme/llama-tiny"), hub.pull("acme/bot")
    x = tiny.sample_input()
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base_path)(input_ids=x).logits
        adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_path).eval()
        adapter_logits = adapter_model(input_ids=x).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # training changed the model

    merged = hub.merge("acme/bot@1", output="acme/bot-merged").wait(timeout=180)
    assert merged.status == "succeeded" and merged.queue == "cpu"
    merged_version = merged.result
    assert merged_version.metadata["lineage"]["adapters"][0]["repo"] == "acme/bot"
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(hub.pull("acme/bot-merged"))(input_ids=x).logits
    assert (merged_logits - adapter_logits).abs().max() <= 1e-5


def test_bad_dataset_fails_fast_naming_the_line(inputs, start_worker, tmp_path):
    start_worker()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{not json\n')
    inputs.push(bad, "acme/bad-data")
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/bad-data", output="acme/bot", **FAST)
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=120)
    assert failed.value.code == "dataset_invalid" and "line 3" in failed.value.message
    assert Job.objects.get(pk=job.id).attempt == 1  # not retried: a bad dataset stays bad
    assert not Version.objects.filter(repository__name="bot").exists()


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkilled_worker_job_is_requeued_and_succeeds_once(inputs, start_worker):
    first = start_worker("first")
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot",
                       **{**FAST, "max_steps": 200, "learning_rate": 1e-3})
    _wait_for(lambda: Job.objects.get(pk=job.id).progress.get("step", 0) >= 3, what="training to start")
    _kill(first)
    # the lease (4 s in tests) runs out; the reaper (beat task / `reap_jobs`) re-queues the job
    _wait_for(lambda: call_command("reap_jobs") or Job.objects.get(pk=job.id).status == "queued", timeout=30,
              what="the reaper to re-queue")
    start_worker("second")
    done = job.wait(timeout=240)
    assert done.status == "succeeded" and done.attempt == 2
    assert Version.objects.filter(job_id=job.id).count() == 1 and Version.objects.filter(repository__name="bot").count() == 1
    reasons = [e.data.get("reason", "") for e in JobEvent.objects.filter(job_id=job.id, type="status")]
    assert any("stopped heartbeating" in r and "re-queued" in r for r in reasons), reasons


def test_a_job_killed_after_its_second_checkpoint_resumes_there_and_ends_as_if_never_interrupted(
        inputs, start_worker, tiny_base, tmp_path):
    """Issue 12's acceptance: SIGKILL the worker after the second checkpoint event; the re-queued attempt starts
    at the newest checkpoint's next step, logs the uninterrupted run's losses, and its adapter's logits equal
    an uninterrupted run's (the recipe in this process, same spec) within 1e-4; one version."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pefthub.protocol.specs import TrainHyperparameters
    from pefthub_worker.training import train

    hyperparameters = {**FAST, "max_steps": 120, "learning_rate": 1e-3, "checkpoint_steps": 10}  # dropout 0.05: RNG matters
    first = start_worker("first")
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot", **hyperparameters)
    deadline = time.monotonic() + 120
    while JobEvent.objects.filter(job_id=job.id, type="checkpoint").count() < 2:
        assert time.monotonic() < deadline and Job.objects.get(pk=job.id).status in ("queued", "running"), \
            "no second checkpoint while the job ran"
        time.sleep(0.02)
    _kill(first)
    saved = list(JobEvent.objects.filter(job_id=job.id, type="checkpoint").values_list("data", flat=True))
    assert [c["step"] for c in saved[:2]] == [10, 20] and all(c["attempt"] == 1 for c in saved), saved
    _wait_for(lambda: call_command("reap_jobs") or Job.objects.get(pk=job.id).status == "queued", timeout=30,
              what="the reaper to re-queue")
    newest = max(c["step"] for c in saved)  # the kill may land after a third checkpoint: attempt 2 takes the newest
    start_worker("second")
    done = job.wait(timeout=240)
    assert done.status == "succeeded" and done.attempt == 2, (done.status, done.error)

    metrics = list(JobEvent.objects.filter(job_id=job.id, type="metric").order_by("seq"))
    second = [e.data for e in metrics if e.attempt == 2 and "loss" in e.data]
    assert second[0]["step"] == newest + 1 and second[-1]["step"] == 120, (newest, second[:2])
    logs = [e.data["message"] for e in JobEvent.objects.filter(job_id=job.id, type="log", attempt=2)]
    assert f"resuming from step {newest} of 120" in logs, logs
    assert [c.step for c in job.checkpoints()] == [110, 100, 90]  # the newest three, attempt 2's
    version = done.result
    assert version.metadata["lineage"]["resumed_from"] == {"step": newest, "attempt": 1}
    assert Version.objects.filter(repository__name="bot").count() == 1

    events: list = []
    hp = TrainHyperparameters.from_dict(hyperparameters, method="lora")
    whole = train(method="lora", hyperparameters=hp, base_dir=tiny_base, dataset_path=tmp_path / "train.jsonl",
                  output_dir=tmp_path / "uninterrupted", callbacks=Callbacks(on_event=lambda t, d: events.append((t, d))))
    expected = {d["step"]: d["loss"] for t, d in events if t == "metric" and "loss" in d}
    assert max(abs(d["loss"] - expected[d["step"]]) for d in second) < 1e-5
    x = tiny.sample_input()
    with torch.no_grad():
        resumed = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), inputs.pull("acme/bot@1"))
        uninterrupted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), whole.output_dir)
        base = AutoModelForCausalLM.from_pretrained(tiny_base)(input_ids=x).logits
        got, want = resumed.eval()(input_ids=x).logits, uninterrupted.eval()(input_ids=x).logits
    assert (got - want).abs().max() <= 1e-4 and (want - base).abs().max() > 1e-3  # equal, and trained


def test_sigkilled_worker_at_the_attempt_limit_fails_with_the_reason(inputs, start_worker):
    proc = start_worker()
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot",
                       max_attempts=1, **{**FAST, "max_steps": 2000})
    _wait_for(lambda: Job.objects.get(pk=job.id).progress.get("step", 0) >= 1, what="training to start")
    _kill(proc)
    _wait_for(lambda: call_command("reap_jobs") or Job.objects.get(pk=job.id).status == "failed", timeout=30,
              what="the reaper to fail the job")
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=5)
    assert failed.value.code == "lease_expired" and "stopped heartbeating" in failed.value.message


def test_cancel_stops_training_within_a_heartbeat(inputs, start_worker):
    start_worker()
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot",
                       **{**FAST, "max_steps": 5000})
    _wait_for(lambda: Job.objects.get(pk=job.id).progress.get("step", 0) >= 2, what="training to start")
    asked = time.monotonic()
    assert job.cancel().status == "cancel_requested"
    with pytest.raises(JobCancelled):
        job.wait(timeout=60)
    took = time.monotonic() - asked
    row = Job.objects.get(pk=job.id)
    assert row.status == "cancelled" and row.progress["step"] < 5000
    assert not Version.objects.filter(repository__name="bot").exists()
    statuses = [e.data["status"] for e in JobEvent.objects.filter(job_id=job.id, type="status").order_by("seq")]
    assert statuses == ["queued", "running", "cancel_requested", "cancelled"]
    print(json.dumps({"cancel_to_cancelled_seconds": round(took, 2), "heartbeat_seconds": 1.0}))


def test_a_job_whose_message_was_lost_is_sent_again_and_runs(inputs, start_worker, settings, tmp_path):
    settings.PEFTHUB_REDISPATCH_SECONDS = 2
    job = inputs.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot", **FAST)
    queue = redis.Redis.from_url(REDIS_URL)
    queue.flushdb()  # the broker lost the message: a restart without persistence
    worker = start_worker()
    time.sleep(3)
    assert Job.objects.get(pk=job.id).status == "queued"  # a worker is up, but nothing tells it about the job
    _wait_for(lambda: call_command("reap_jobs") or Job.objects.get(pk=job.id).status != "queued", timeout=30,
              what="the reaper to send the job again")
    done = job.wait(timeout=180)
    assert done.status == "succeeded" and done.attempt == 1
    logs = [e.data["message"] for e in JobEvent.objects.filter(job_id=job.id, type="log")]
    assert any("sent it again" in m for m in logs), logs

    from pefthub_server.jobs.dispatch import job_dispatch

    job_dispatch(job=Job.objects.get(pk=job.id))  # a duplicate, as a re-send of a slow message makes
    _wait_for(lambda: queue.llen("gpu") == 0 and not queue.hlen("unacked"), timeout=30,
              what="the worker to take the duplicate and ack it")
    _wait_for(lambda: "not claimed" in (tmp_path / "worker-w.log").read_text(), timeout=10, what="the worker's log")
    assert worker.poll() is None and Job.objects.get(pk=job.id).attempt == 1  # it moved on; nothing re-ran


def _pefthub(live_server, token: str, *args: str) -> subprocess.CompletedProcess:
    """The `pefthub` CLI as a user runs it, against the live hub."""
    env = {**os.environ, "PEFTHUB_URL": live_server.url, "PEFTHUB_TOKEN": token, "PEFTHUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "-m", "pefthub", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_continue_from_a_version_starts_at_its_loss_and_records_the_parent(inputs, start_worker, alice, live_server,
                                                                           tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefthub_worker.training import data, recipe

    start_worker()
    hub = inputs
    # the 48 training rows are one batch (no dropout), so a run's first step sees all of them: a continued run's
    # first loss is v1's loss on them; eval_split holds the same 16 rows out in both runs (same seed)
    rows = {"max_seq_length": 64, "batch_size": 48, "eval_split": 0.25, "lora_dropout": 0.0, "learning_rate": 1e-2}
    v1 = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot", r=8, max_steps=30,
                   **rows).wait(timeout=180).result
    cli = _pefthub(live_server, alice.token, "train", "--base-model", "acme/llama-tiny", "--dataset", "acme/support-data",
                   "--output", "acme/bot", "--continue-from", "acme/bot@1", "--set", "max_steps=5",
                   *(f"--set={key}={value}" for key, value in rows.items()), "--wait")
    job_id, result = cli.stdout.split()
    assert result == "acme/bot@2"
    v2 = hub.version("acme/bot@2")

    assert v2.metadata["lineage"]["parent"] == {"repo": "acme/bot", "number": 1, "digest": v1.digest}
    assert v2.metadata["lineage"]["hyperparameters"]["r"] == 8 and v2.adapter["r"] == 8  # the parent's, left out
    before, after = v1.metadata["metrics"], v2.metadata["metrics"]
    # the same held-out rows: v2 starts exactly where v1 ended
    assert after["eval_loss_before"] == pytest.approx(before["eval_loss"], abs=1e-5), (before, after)
    base_path, tokenizer = hub.pull("acme/llama-tiny"), AutoTokenizer.from_pretrained(hub.pull("acme/llama-tiny"))
    examples, _ = data.tokenize(*data.read_jsonl(tmp_path / "train.jsonl"), tokenizer, max_seq_length=64, name="train.jsonl")
    train_rows, _ = data.split(examples, 0.25, 0)
    v1_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), hub.pull("acme/bot@1")).eval()
    v1_loss = recipe._evaluate(v1_model, train_rows, len(train_rows), tokenizer.pad_token_id, torch.device("cpu"))
    fresh = before["first_loss"]  # v1's own first step: a fresh adapter on the same rows
    print(json.dumps({"fresh_first_loss": fresh, "v1_final_loss": before["final_loss"], "v1_loss_on_the_rows": v1_loss,
                      "continued_first_loss": after["first_loss"], "continued_final_loss": after["final_loss"]}))
    assert after["first_loss"] == pytest.approx(v1_loss, abs=1e-4)
    assert after["first_loss"] < fresh - 0.3 and after["final_loss"] < after["first_loss"], (fresh, after)
    logs = [e.data["message"] for e in JobEvent.objects.filter(job_id=job_id, type="log")]
    assert "continuing from acme/bot@1" in logs, logs

    info = _pefthub(live_server, alice.token, "info", "acme/bot@2").stdout
    assert "parent    acme/bot@1 (continued from it)" in info, info
