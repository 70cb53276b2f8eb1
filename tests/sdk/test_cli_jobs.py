from __future__ import annotations

import json
import sys

import pytest

from pefthub.cli import main

from .fakes import TOKEN

pytestmark = pytest.mark.usefixtures("clock")

BASE = ["--base-model", "acme/llama-tiny", "--dataset", "acme/support-data", "--output", "acme/support-bot"]


@pytest.fixture
def env(monkeypatch, fake_jobs, tmp_path):
    monkeypatch.setenv("PEFTHUB_URL", fake_jobs.hub.url)
    monkeypatch.setenv("PEFTHUB_TOKEN", TOKEN)
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    return fake_jobs


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def submitted(server) -> dict:
    return json.loads(server.requests("POST", "/api/v1/jobs")[-1].body)


def test_train_set_values_are_json_when_they_parse(capsys, env, server):
    code, out, err = run(capsys, "train", *BASE, "--set", "r=8", "--set", 'target_modules=["q_proj"]',
                         "--set", "learning_rate=1e-4", "--set", "dataset_file=data/train.jsonl",
                         "--set", "gradient_checkpointing=true", "--alias", "staging", "-m", "nightly")
    assert (code, err) == (0, "")
    [job_id] = env.jobs
    assert out == f"{job_id}\n"  # the id alone: `JOB=$(pefthub train ...)`
    assert submitted(server) == {
        "type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/support-data",
        "output": "acme/support-bot", "method": "lora",
        "hyperparameters": {"r": 8, "target_modules": ["q_proj"], "learning_rate": 1e-4,
                            "dataset_file": "data/train.jsonl", "gradient_checkpointing": True},
        "aliases": ["staging"], "message": "nightly",
    }


def test_train_config_file_with_flags_on_top(capsys, env, server, tmp_path):
    config = tmp_path / "spec.yaml"
    config.write_text("base_model: acme/llama-tiny\ndataset: acme/old-data\noutput: acme/support-bot\n"
                      "method: dora\nr: 4\nlora_dropout: 0.1\nhyperparameters:\n  epochs: 2\n  r: 2\n"
                      "aliases: [canary]\nqueue: cpu\n")
    code, _, err = run(capsys, "train", "--config", str(config), "--dataset", "acme/new-data", "--set", "r=16",
                       "--max-attempts", "5")
    assert (code, err) == (0, "")
    assert submitted(server) == {
        "type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/new-data", "output": "acme/support-bot",
        "method": "dora", "hyperparameters": {"epochs": 2, "r": 16, "lora_dropout": 0.1},
        "aliases": ["canary"], "message": "", "queue": "cpu", "max_attempts": 5,
    }
    # a job's own spec, as JSON, is a config too
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/d",
                                "output": "acme/o", "method": "ia3", "hyperparameters": {"epochs": 3}}))
    assert run(capsys, "train", "--config", str(spec))[0] == 0
    assert submitted(server)["hyperparameters"] == {"epochs": 3}


def test_train_yaml_without_pyyaml_says_what_to_install(capsys, env, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "yaml", None)
    config = tmp_path / "spec.yaml"
    config.write_text("base_model: acme/llama-tiny\n")
    code, out, err = run(capsys, "train", "--config", str(config))
    assert code == 2 and out == "" and "pip install pyyaml" in err


def test_train_refusals(capsys, env, server):
    code, _, err = run(capsys, "train", "--base-model", "acme/llama-tiny", "--output", "acme/bot")
    assert code == 2 and "--dataset" in err
    code, _, err = run(capsys, "train", *BASE, "--set", "r")
    assert code == 2 and "key=value" in err
    code, out, err = run(capsys, "train", *BASE, "--set", "r=0")
    assert (code, out) == (1, "") and err.startswith("error: ") and "hyperparameters.r" in err
    code, _, err = run(capsys, "train", *BASE, "--set", "rank=8")
    assert code == 1 and "unknown key 'hyperparameters.rank'" in err
    assert run(capsys, "train", *BASE, "--method", "adalora")[0] == 2  # argparse choices
    assert server.requests("POST", "/api/v1/jobs") == []


def _succeed(fake_jobs, result: dict | None = None, error: dict | None = None) -> None:
    """Ticks for the job the command is about to submit: running, then it ends."""
    fake_jobs.ticks = [
        fake_jobs.update(None, status="running", progress={"step": 1, "total_steps": 2}),
        fake_jobs.update(None, status="failed" if error else "succeeded", result=result, error=error),
    ]


def test_train_wait_prints_the_id_then_the_result_ref(capsys, env):
    _succeed(env, result={"repo": "acme/support-bot", "number": 3, "digest": "sha256:" + "a" * 64})
    code, out, err = run(capsys, "train", *BASE, "--wait")
    [job_id] = env.jobs
    assert (code, out, err) == (0, f"{job_id}\nacme/support-bot@3\n", "")


def test_train_wait_on_a_failed_job_exits_1_with_the_workers_error(capsys, env):
    _succeed(env, error={"code": "dataset_invalid", "message": "line 7: missing `completion`"})
    code, out, err = run(capsys, "train", *BASE, "--wait")
    assert code == 1 and out == f"{next(iter(env.jobs))}\n"
    assert err.startswith("error: ") and "dataset_invalid" in err and "line 7: missing `completion`" in err


def test_merge(capsys, env, server):
    code, out, _ = run(capsys, "merge", "acme/bot@3", "acme/sql@1", "--output", "acme/merged",
                       "--weights", "0.7,0.3", "--combination", "ties", "--density", "0.4", "--dtype", "bfloat16")
    assert code == 0 and out == f"{next(iter(env.jobs))}\n"
    assert submitted(server) == {
        "type": "merge", "adapters": [{"ref": "acme/bot@3", "weight": 0.7}, {"ref": "acme/sql@1", "weight": 0.3}],
        "output": "acme/merged", "combination": "ties", "density": 0.4, "dtype": "bfloat16",
        "aliases": [], "message": "",
    }
    assert run(capsys, "merge", "acme/bot@3", "--output", "acme/m", "--weights", "a,b")[0] == 2
    code, _, err = run(capsys, "merge", "acme/bot@3", "--output", "acme/m", "--weights", "0.5,0.5")
    assert code == 1 and "weights" in err
    _succeed(env, result={"repo": "acme/m", "number": 1, "digest": "sha256:" + "b" * 64})
    code, out, _ = run(capsys, "merge", "acme/bot@3", "--output", "acme/m", "--wait")
    assert code == 0 and out.splitlines()[-1] == "acme/m@1"


def test_jobs_logs_formats_each_event(capsys, env):
    job_id = env.add(status="running")["id"]
    env.emit(job_id, "status", {"status": "running"})
    env.emit(job_id, "log", {"message": "loaded 120 rows", "level": "info"})
    env.emit(job_id, "metric", {"step": 10, "total_steps": 40, "loss": 2.3141, "learning_rate": 0.0002})
    env.emit(job_id, "metric", {"step": 20, "epoch": 0.5, "eval_loss": 2.0, "learning_rate": 1.5e-05,
                                "tokens_per_second": 51234.4, "grad_norm": 0.91})
    env.emit(job_id, "log", {"message": "slow disk", "level": "warning"})
    env.emit(job_id, "artifact", {"repo": "acme/bot", "number": 3, "digest": "sha256:abc"})
    env.emit(job_id, "status", {"status": "failed", "reason": "oom"}, attempt=2)

    code, out, _ = run(capsys, "jobs", "logs", job_id)
    assert code == 0
    assert out.splitlines() == [
        "2025-01-01 12:00:00  status running (attempt 1)",
        "2025-01-01 12:00:00  loaded 120 rows",
        "2025-01-01 12:00:00  step 10/40 loss 2.314 lr 2e-04",
        "2025-01-01 12:00:00  step 20 eval_loss 2 lr 1.5e-05 epoch 0.5 tok/s 51234 grad_norm 0.91",
        "2025-01-01 12:00:00  WARNING slow disk",
        "2025-01-01 12:00:00  artifact acme/bot@3 sha256:abc",
        "2025-01-01 12:00:00  status failed (attempt 2): oom",
    ]
    code, out, _ = run(capsys, "jobs", "logs", job_id, "--after", "6")
    assert out == "2025-01-01 12:00:00  status failed (attempt 2): oom\n"


def test_jobs_logs_follow_stops_when_the_job_ends(capsys, env):
    job_id = env.add(status="running")["id"]
    env.ticks = [lambda: None, lambda: None, lambda: env.emit(job_id, "metric", {"step": 1, "loss": 1.0}),
                 env.update(job_id, status="succeeded")]
    code, out, _ = run(capsys, "jobs", "logs", job_id, "-f")
    assert code == 0
    assert out.splitlines() == ["2025-01-01 12:00:00  step 1 loss 1", "2025-01-01 12:00:00  status succeeded (attempt 1)"]


def test_jobs_cancel_ls_show(capsys, env):
    queued = env.add(status="queued", output="acme/a")["id"]
    running = env.add(status="running", output="acme/b", progress={"step": 3, "total_steps": 9})["id"]
    assert run(capsys, "jobs", "cancel", queued)[:2] == (0, f"{queued} cancelled\n")
    assert run(capsys, "jobs", "cancel", running)[:2] == (0, f"{running} cancel_requested\n")
    code, _, err = run(capsys, "jobs", "cancel", queued)
    assert code == 1 and err.startswith("error: 409 conflict")

    code, out, _ = run(capsys, "jobs", "ls")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "OUTPUT", "STEP", "CREATED"]
    assert [r.split()[:5] for r in rows] == [[running, "train", "cancel_requested", "acme/b", "3/9"],
                                            [queued, "train", "cancelled", "acme/a", "-"]]
    code, out, _ = run(capsys, "jobs", "ls", "--status", "cancelled", "--json")
    assert [j["id"] for j in json.loads(out)] == [queued]

    env.jobs[running].update(inputs={"base_model": {"repo": "acme/llama-tiny", "number": 1, "digest": "sha256:x"}},
                             error={"code": "lease_expired", "message": "no heartbeat"}, attempt=2)
    code, out, _ = run(capsys, "jobs", "show", running)
    lines = out.splitlines()
    assert code == 0 and lines[0] == running
    assert "status    cancel_requested (attempt 2/3)" in lines and "base_model acme/llama-tiny@1" in lines
    assert "progress  step 3/9" in lines and "error     lease_expired: no heartbeat" in lines
    assert json.loads(run(capsys, "jobs", "show", running, "--json")[1])["id"] == running
    assert run(capsys, "jobs", "show", "f" * 32)[0] == 1
    assert run(capsys, "jobs")[0] == 2
