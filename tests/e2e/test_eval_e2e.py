"""Evaluation end to end: a live hub, Redis, and a real `pefthub-worker` process that trains, then scores.

Train two versions, evaluate both on a held-out dataset through the worker, and read the metrics back
through the SDK (``hub.version``), the CLI (``pefthub info``, ``pefthub compare``) and ``hub.compare``. The
worker's numbers are checked against the eval recipe run here on the same pulled files.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from examples import tiny
from pefthub_server.registry.models import Evaluation, Version
from pefthub_worker.evaluation import evaluate
from tests.e2e.test_jobs_e2e import FAST, inputs, start_worker  # noqa: F401 - fixtures, shared

HELDOUT = "acme/heldout"


def _cli(hub, *args: str) -> str:
    env = {**os.environ, "PEFTHUB_URL": hub.url, "PEFTHUB_TOKEN": hub.token, "PEFTHUB_DISABLE_PROGRESS_BARS": "1",
           "PEFTHUB_CACHE": str(hub.cache_dir)}
    done = subprocess.run([sys.executable, "-m", "pefthub", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_evaluate_then_compare_two_versions(inputs, start_worker, tmp_path):  # noqa: F811 - fixtures
    start_worker()
    hub = inputs
    hub.push(tiny.make_dataset(tmp_path / "heldout.jsonl", rows=12, seed=7), HELDOUT)
    for steps in (4, 30):
        job = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/bot",
                        **{**FAST, "max_steps": steps})
        assert job.wait(timeout=180).status == "succeeded"

    first = hub.evaluate("acme/bot@1", dataset=HELDOUT, max_new_tokens=8).wait(timeout=180)
    printed = _cli(hub, "eval", "acme/bot@2", "--dataset", HELDOUT, "--max-new-tokens", "8", "--wait").splitlines()
    evals = [first, hub.job(printed[0])]  # the CLI prints the job's id, then its metrics
    assert printed[1].split() == ["METRIC", "VALUE"] and [line.split()[0] for line in printed[2:]] == sorted(
        evals[1].metrics)
    assert any(line.split() == ["loss", f"{evals[1].metrics['loss']:.4g}"] for line in printed)
    assert all(e.status == "succeeded" and e.queue == "cpu" and e.result_ref is None for e in evals)
    assert Version.objects.filter(repository__name="bot").count() == 2  # an eval job makes no version
    assert Evaluation.objects.count() == 2

    v1, v2 = hub.version("acme/bot@1"), hub.version("acme/bot@2")
    (e1,), (e2,) = v1.evaluations, v2.evaluations
    assert e1.dataset_ref == f"{HELDOUT}@1" and e1.job == evals[0].id and e1.metrics == evals[0].metrics
    assert set(e1.metrics) == {"rows", "tokens", "loss", "perplexity", "exact_match", "token_accuracy",
                               "generated_rows", "reference_tokens", "eval_seconds"}
    assert e1.metrics["rows"] == 12 and 0 <= e1.metrics["token_accuracy"] <= 1
    assert e2.metrics["loss"] < e1.metrics["loss"] - 0.1  # 30 steps fit better than 4, in nats, well above noise

    # the worker's numbers are the recipe's on the same bytes
    here = evaluate(base_dir=hub.pull("acme/llama-tiny@1"), adapter_dir=hub.pull("acme/bot@1"),
                    dataset_path=hub.pull(f"{HELDOUT}@1") / "heldout.jsonl", max_new_tokens=8)
    assert here["loss"] == pytest.approx(e1.metrics["loss"], abs=1e-6)
    assert (here["exact_match"], here["token_accuracy"]) == (e1.metrics["exact_match"], e1.metrics["token_accuracy"])

    info = _cli(hub, "info", "acme/bot@1")
    assert f"eval {HELDOUT}@1" in info and "token_accuracy" in info and "final_loss" in info
    assert f"{e1.metrics['loss']:.4g}" in info

    comparison = hub.compare("acme/bot@1", "acme/bot@2")
    loss = comparison.row(f"{HELDOUT}@1", "loss")
    assert loss.delta == pytest.approx(e2.metrics["loss"] - e1.metrics["loss"])
    final = comparison.row("training", "final_loss")
    assert (final.a, final.b) == (v1.training_metrics["final_loss"], v2.training_metrics["final_loss"])
    printed = _cli(hub, "compare", "acme/bot@1", "acme/bot@2")
    assert printed.splitlines()[0].split() == ["GROUP", "METRIC", "acme/bot@1", "acme/bot@2", "DELTA"]
    assert any(line.split()[:2] == [f"{HELDOUT}@1", "perplexity"] for line in printed.splitlines())
