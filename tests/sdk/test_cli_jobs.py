"""``pefthub train``, ``merge`` and ``jobs ls|show|logs|cancel`` against the real hub, through the proxy.

The worker is played through the hub's worker API (``state.Worker``); ``proxy.before`` runs
its next step just before a poll of the job reaches the hub.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from .state import EVENT_TIME_SHOWN, POLL

pytestmark = pytest.mark.usefixtures("clock")

BASE = ["--base-model", "acme/llama-tiny", "--dataset", "acme/support-data", "--output", "acme/support-bot"]
#: how ``jobs logs`` prints an event's time
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def submitted(proxy) -> dict:
    return json.loads(proxy.requests("POST", "/api/v1/jobs")[-1].body)


def texts(out: str) -> list[str]:
    """The lines of ``jobs logs``, each checked to start with a time, without it."""
    lines = out.splitlines()
    assert all(STAMP.fullmatch(line[:19]) and line[19:21] == "  " for line in lines), lines
    return [line[21:] for line in lines]


def test_train_set_values_are_json_when_they_parse(cli, env, job_inputs, proxy):
    code, out, err = cli("train", *BASE, "--set", "r=8", "--set", 'target_modules=["q_proj"]',
                         "--set", "learning_rate=1e-4", "--set", "dataset_file=data/train.jsonl",
                         "--set", "gradient_checkpointing=true", "--alias", "staging", "-m", "nightly")
    assert (code, err) == (0, "")
    [job_id] = [j.id for j in env.hub.jobs()]
    assert out == f"{job_id}\n"  # the id alone: `JOB=$(pefthub train ...)`
    assert submitted(proxy) == {
        "type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/support-data",
        "output": "acme/support-bot", "method": "lora",
        "hyperparameters": {"r": 8, "target_modules": ["q_proj"], "learning_rate": 1e-4,
                            "dataset_file": "data/train.jsonl", "gradient_checkpointing": True},
        "aliases": ["staging"], "message": "nightly",
    }


def test_train_config_file_with_flags_on_top(cli, env, job_inputs, proxy, tmp_path):
    env.push("acme/new-data", {"train.jsonl": b'{"text": "new"}\n'})
    config = tmp_path / "spec.yaml"
    config.write_text("base_model: acme/llama-tiny\ndataset: acme/old-data\noutput: acme/support-bot\n"
                      "method: dora\nr: 4\nlora_dropout: 0.1\nhyperparameters:\n  epochs: 2\n  r: 2\n"
                      "aliases: [canary]\nqueue: cpu\n")
    code, _, err = cli("train", "--config", str(config), "--dataset", "acme/new-data", "--set", "r=16",
                       "--max-attempts", "5")
    assert (code, err) == (0, "")
    assert submitted(proxy) == {
        "type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/new-data", "output": "acme/support-bot",
        "method": "dora", "hyperparameters": {"epochs": 2, "r": 16, "lora_dropout": 0.1},
        "aliases": ["canary"], "message": "", "queue": "cpu", "max_attempts": 5,
    }
    # a job's own spec, as JSON, is a config too
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/support-data",
                                "output": "acme/o", "method": "ia3", "hyperparameters": {"epochs": 3}}))
    assert cli("train", "--config", str(spec))[0] == 0
    assert submitted(proxy)["hyperparameters"] == {"epochs": 3}


def test_train_yaml_without_pyyaml_says_what_to_install(cli, env, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "yaml", None)
    config = tmp_path / "spec.yaml"
    config.write_text("base_model: acme/llama-tiny\n")
    code, out, err = cli("train", "--config", str(config))
    assert code == 2 and out == "" and "pip install pyyaml" in err


def test_train_refusals(cli, env, proxy):
    code, _, err = cli("train", "--base-model", "acme/llama-tiny", "--output", "acme/bot")
    assert code == 2 and "--dataset" in err
    code, _, err = cli("train", *BASE, "--set", "r")
    assert code == 2 and "key=value" in err
    code, out, err = cli("train", *BASE, "--set", "r=0")
    assert (code, out) == (1, "") and err.startswith("error: ") and "hyperparameters.r" in err
    code, _, err = cli("train", *BASE, "--set", "learnin_rate=2e-4")
    assert (code, err) == (1, "error: unknown hyperparameter `learnin_rate`; did you mean `learning_rate`?\n")
    assert cli("train", *BASE, "--method", "adalora")[0] == 2  # argparse choices
    assert proxy.requests("POST", "/api/v1/jobs") == []


def _then(proxy, worker, env, end) -> None:
    """Steps for the job the command is about to submit, one per poll: running at step 1/2, then ``end(job_id)``."""
    job: list[str] = []

    def start() -> None:
        job.append(env.newest_job())
        worker.claim(job[0])
        worker.heartbeat(job[0], step=1, total_steps=2)

    proxy.before("GET", POLL, start, lambda: end(job[0]))


def test_train_wait_prints_the_id_then_the_result_ref(cli, env, job_inputs, worker, proxy):
    env.adapter("acme/support-bot", 1)
    env.adapter("acme/support-bot", 2)
    result = env.folder(env.adapter_files(variant=3))
    _then(proxy, worker, env, lambda job_id: worker.succeed(job_id, result))
    code, out, err = cli("train", *BASE, "--wait")
    job_id = env.newest_job()
    assert (code, out, err) == (0, f"{job_id}\nacme/support-bot@3\n", "")


def test_train_wait_on_a_failed_job_exits_1_with_the_workers_error(cli, env, job_inputs, worker, proxy):
    _then(proxy, worker, env, lambda job_id: worker.fail(job_id, "dataset_invalid", "line 7: missing `completion`"))
    code, out, err = cli("train", *BASE, "--wait")
    assert code == 1 and out == f"{env.newest_job()}\n"
    assert err.startswith("error: ") and "dataset_invalid" in err and "line 7: missing `completion`" in err


def test_merge(cli, env, adapters, worker, proxy):
    code, out, _ = cli("merge", "acme/bot@3", "acme/sql@1", "--output", "acme/merged",
                       "--weights", "0.7,0.3", "--combination", "ties", "--density", "0.4", "--dtype", "bfloat16")
    assert code == 0 and out == f"{env.newest_job()}\n"
    assert submitted(proxy) == {
        "type": "merge", "adapters": [{"ref": "acme/bot@3", "weight": 0.7}, {"ref": "acme/sql@1", "weight": 0.3}],
        "output": "acme/merged", "combination": "ties", "density": 0.4, "dtype": "bfloat16",
        "aliases": [], "message": "",
    }
    assert cli("merge", "acme/bot@3", "--output", "acme/m", "--weights", "a,b")[0] == 2
    code, _, err = cli("merge", "acme/bot@3", "--output", "acme/m", "--weights", "0.5,0.5")
    assert code == 1 and "weights" in err
    _then(proxy, worker, env, lambda job_id: worker.succeed(job_id, env.base_folder()))  # the merged model
    code, out, _ = cli("merge", "acme/bot@3", "--output", "acme/m", "--wait")
    assert code == 0 and out.splitlines()[-1] == "acme/m@1"


@pytest.fixture
def running_job(env, job_inputs, worker) -> str:
    """A job a worker claimed: the hub logged `queued` (seq 1) and `running` (seq 2)."""
    job_id = env.train(output="acme/bot").id
    worker.claim(job_id)
    return job_id


def test_jobs_logs_formats_each_event(cli, running_job, worker):
    job_id = running_job
    worker.event(job_id, "log", message="loaded 120 rows", level="info")
    worker.event(job_id, "metric", step=10, total_steps=40, loss=2.3141, learning_rate=0.0002)
    worker.event(job_id, "metric", step=20, epoch=0.5, eval_loss=2.0, learning_rate=1.5e-05,
                 tokens_per_second=51234.4, grad_norm=0.91)
    worker.event(job_id, "log", message="slow disk", level="warning")
    worker.event(job_id, "artifact", repo="acme/bot", number=3, digest="sha256:abc")
    worker.fail(job_id, "oom", "oom", retryable=True)  # the hub re-queues it, saying why
    worker.claim(job_id)
    worker.fail(job_id, "oom", "oom", retryable=True)

    code, out, _ = cli("jobs", "logs", job_id)
    assert code == 0
    assert texts(out) == [
        "status queued",
        "status running (attempt 1)",
        "loaded 120 rows",
        "step 10/40 loss 2.314 lr 2e-04",
        "step 20 eval_loss 2 lr 1.5e-05 epoch 0.5 tok/s 51234 grad_norm 0.91",
        "WARNING slow disk",
        "artifact acme/bot@3 sha256:abc",
        "status queued (attempt 1): attempt 1 of 3 failed: oom",
        "status running (attempt 2)",
        "status queued (attempt 2): attempt 2 of 3 failed: oom",
    ]
    assert [line[:19] for line in out.splitlines()[2:7]] == [EVENT_TIME_SHOWN] * 5  # the worker's own clock
    code, out, _ = cli("jobs", "logs", job_id, "--after", "9")
    assert texts(out) == ["status queued (attempt 2): attempt 2 of 3 failed: oom"]


def test_jobs_logs_says_why_a_job_failed(cli, running_job, worker):
    worker.fail(running_job, "oom", "CUDA out of memory")
    code, out, _ = cli("jobs", "logs", running_job, "--after", "2")
    assert code == 0
    [line] = texts(out)
    assert line.startswith("status failed (attempt 1): ") and "oom" in line and "CUDA out of memory" in line


def test_jobs_logs_follow_stops_when_the_job_ends(cli, env, running_job, worker, proxy, clock):
    job_id = running_job
    result = env.folder(env.adapter_files())
    pushed = []
    proxy.before("GET", POLL, lambda: None, lambda: None, lambda: None,
                 lambda: worker.event(job_id, "metric", step=1, loss=1.0),
                 lambda: pushed.append(worker.succeed(job_id, result)))
    code, out, _ = cli("jobs", "logs", job_id, "-f")
    assert code == 0
    assert texts(out) == ["status queued", "status running (attempt 1)", "step 1 loss 1",
                          f"artifact acme/bot@1 {pushed[0].digest}", "status succeeded (attempt 1)"]
    assert clock.sleeps == [1.0]  # one poll found nothing new


def test_jobs_cancel_ls_show(cli, env, job_inputs, worker):
    queued = env.train(output="acme/a").id
    running = env.train(output="acme/b").id
    worker.claim(running)
    worker.fail(running, "lease_expired", "no heartbeat", retryable=True)
    worker.claim(running)  # attempt 2
    worker.heartbeat(running, step=3, total_steps=9)
    assert cli("jobs", "cancel", queued)[:2] == (0, f"{queued} cancelled\n")
    assert cli("jobs", "cancel", running)[:2] == (0, f"{running} cancel_requested\n")
    code, _, err = cli("jobs", "cancel", queued)
    assert code == 1 and err.startswith("error: 409 conflict")

    code, out, _ = cli("jobs", "ls")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "OUTPUT", "STEP", "CREATED"]
    assert [r.split()[:5] for r in rows] == [[running, "train", "cancel_requested", "acme/b", "3/9"],
                                            [queued, "train", "cancelled", "acme/a", "-"]]
    code, out, _ = cli("jobs", "ls", "--status", "cancelled", "--json")
    assert [j["id"] for j in json.loads(out)] == [queued]

    code, out, _ = cli("jobs", "show", running)
    lines = out.splitlines()
    assert code == 0 and lines[0] == running
    assert "status    cancel_requested (attempt 2/3)" in lines and "base_model acme/llama-tiny@1" in lines
    assert "progress  step 3/9" in lines
    failed = env.train(output="acme/c").id
    worker.claim(failed)
    worker.fail(failed, "lease_expired", "no heartbeat")
    assert "error     lease_expired: no heartbeat" in cli("jobs", "show", failed)[1].splitlines()
    assert json.loads(cli("jobs", "show", running, "--json")[1])["id"] == running
    assert cli("jobs", "show", "f" * 32)[0] == 1
    assert cli("jobs")[0] == 2


def test_jobs_checkpoints_and_promote(cli, env, job_inputs, worker, tmp_path):
    state = {**env.adapter_files(), "trainer_state.json": b'{"format": 1}'}  # built before the claim: 4 s leases
    job_id = env.train(output="acme/bot").id
    worker.claim(job_id)
    assert cli("jobs", "checkpoints", job_id)[:2] == (0, f"job {job_id} has no checkpoints\n")
    saved = worker.checkpoint(job_id, 5, env.folder(state), loss=1.25, learning_rate=0.0002)
    assert (saved.step, saved.attempt, saved.metrics) == (5, 1, {"loss": 1.25, "learning_rate": 0.0002})
    worker.checkpoint(job_id, 10, env.folder(state), loss=0.5)

    code, out, _ = cli("jobs", "checkpoints", job_id[:10])
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["STEP", "ATTEMPT", "METRICS", "CREATED"]
    assert [r.split()[:5] for r in rows] == [["10", "1", "loss", "0.5", env.hub.checkpoints(job_id)[0].created_at],
                                            ["5", "1", "loss", "1.25", "lr"]]
    assert [c["step"] for c in json.loads(cli("jobs", "checkpoints", job_id, "--json")[1])] == [10, 5]
    code, out, _ = cli("jobs", "logs", job_id, "--after", "2")
    assert texts(out) == ["checkpoint at step 5: loss 1.25 lr 2e-04", "checkpoint at step 10: loss 0.5"]

    # the owner downloads one as it was saved
    folder = env.hub.pull_checkpoint(job_id, 10, tmp_path / "ckpt")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == state

    code, out, err = cli("jobs", "promote", job_id, "5", "--output", "acme/early", "--alias", "candidate")
    assert (code, err) == (0, "")
    version = env.hub.version("acme/early@candidate")
    assert out == f"acme/early@1 {version.digest} created (step 5 of job {job_id})\n"
    assert version.metadata["lineage"]["checkpoint_step"] == 5 and version.metadata["lineage"]["job"] == job_id
    assert sorted(f.path for f in version.files) == ["adapter_config.json", "adapter_model.safetensors"]
    code, _, err = cli("jobs", "promote", job_id, "7", "--output", "acme/early")
    assert code == 1 and "no checkpoint at step 7" in err and "steps 5, 10" in err
