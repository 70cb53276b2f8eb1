"""Checkpoints of the training recipe: saved without pickle, resumed to the very weights of an uninterrupted run.

Real training of the tiny Llama with dropout on (so the random state matters), gradient
accumulation and warmup (so the scheduler's and the stream's positions matter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from examples import tiny
from pefthub.protocol.errors import SpecError
from pefthub.protocol.specs import TrainHyperparameters
from pefthub_worker.training import Callbacks, CheckpointError, checkpoint, recipe, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

HP = {"batch_size": 4, "max_seq_length": 48, "learning_rate": 1e-2, "max_steps": 9, "warmup_steps": 2,
      "gradient_accumulation_steps": 2, "lora_dropout": 0.1, "r": 4, "eval_split": 0.1, "checkpoint_steps": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny.make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "llama-tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny.make_dataset(tmp_path_factory.mktemp("ckpt-data") / "train.jsonl", rows=40)


def _run(base, dataset, out: Path, *, keep: Path | None = None, resume_from: Path | None = None, **overrides):
    """Train; with ``keep``, copy every checkpoint to ``keep/<step>``. Returns (result, events, checkpoint steps)."""
    events, steps = [], []

    def on_checkpoint(folder: Path, step: int, metrics: dict) -> None:
        steps.append((step, metrics))
        if keep is not None:
            shutil.copytree(folder, keep / str(step))

    hp = TrainHyperparameters.from_dict({**HP, **overrides}, method="lora")
    result = train(method="lora", hyperparameters=hp, base_dir=base, dataset_path=dataset, output_dir=out,
                   callbacks=Callbacks(on_event=lambda t, d: events.append((t, d)), on_checkpoint=on_checkpoint),
                   resume_from=resume_from)
    return result, events, steps


def _metric_steps(events) -> list[tuple[int, float]]:
    return [(d["step"], d["loss"]) for t, d in events if t == "metric" and "loss" in d]


def test_a_resumed_run_ends_with_the_weights_and_losses_of_an_uninterrupted_one(base, dataset, tmp_path):
    whole, whole_events, steps = _run(base, dataset, tmp_path / "whole", keep=tmp_path / "kept")
    assert [s for s, _ in steps] == [3, 6]  # every 3 steps, none at the last one (the result is the adapter)
    assert steps[0][1]["loss"] == pytest.approx(_metric_steps(whole_events)[2][1])

    folder = tmp_path / "kept" / "6"
    # No pickle anywhere: tensors in safetensors, the rest JSON
    assert {p.name for p in folder.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json",
                                                  "optimizer.safetensors", "rng.safetensors", "trainer_state.json"}
    assert not [p for p in folder.iterdir() if p.suffix not in (".safetensors", ".json", ".md")]
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["loop"]["step"] == 6 and state["loop"]["consumed"] == 12  # 6 steps x 2 micro-batches
    assert state["scheduler"]["last_epoch"] == 6
    optimizer = load_file(folder / "optimizer.safetensors")
    assert {k.split(".", 1)[1] for k in optimizer} == {"exp_avg", "exp_avg_sq", "step"}
    assert float(optimizer["0.step"]) == 6.0

    resumed, resumed_events, resumed_steps = _run(base, dataset, tmp_path / "resumed", resume_from=folder)
    assert resumed_steps == []  # no checkpoint due after step 6 of 9 before the end
    logs = [d["message"] for t, d in resumed_events if t == "log"]
    assert "resuming from step 6 of 9" in logs
    # the losses after step 6 are the uninterrupted run's, to the last bit on this CPU
    assert _metric_steps(resumed_events) == _metric_steps(whole_events)[6:]
    a = load_file(whole.output_dir / "adapter_model.safetensors")
    b = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("first_loss", "final_loss", "train_tokens", "eval_loss_before", "eval_loss", "steps"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert not [t for t, d in resumed_events if t == "metric" and d.get("step") == 0]  # eval_loss_before not redone


def test_resuming_without_the_random_state_would_differ(base, dataset, tmp_path):
    """The test above can fail: with dropout on, a run resumed from fresh RNG takes other steps."""
    _run(base, dataset, tmp_path / "whole", keep=tmp_path / "kept")
    folder = tmp_path / "kept" / "3"
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    original = checkpoint.restore

    def restore_but_reseed(*args, **kwargs):
        original(*args, **kwargs)
        torch.manual_seed(12345)

    checkpoint.restore = restore_but_reseed
    try:
        _run(base, dataset, tmp_path / "reseeded", resume_from=folder)
    finally:
        checkpoint.restore = original
    reseeded = load_file(tmp_path / "reseeded" / "adapter_model.safetensors")
    assert max(float((whole[k] - reseeded[k]).abs().max()) for k in whole) > 1e-6


def test_time_also_triggers_checkpoints(base, dataset, tmp_path):
    _, _, steps = _run(base, dataset, tmp_path / "out", checkpoint_steps=100)
    assert steps == []
    hp = TrainHyperparameters.from_dict({**HP, "checkpoint_steps": 100}, method="lora")
    seen = []
    train(method="lora", hyperparameters=hp, base_dir=base, dataset_path=dataset, output_dir=tmp_path / "timed",
          callbacks=Callbacks(on_checkpoint=lambda f, s, m: seen.append(s)), checkpoint_seconds=0.0)
    assert seen == list(range(1, 9))  # every step once no time is allowed between them, the last excepted


def test_default_is_four_checkpoints_a_run_and_the_field_is_checked():
    hp = TrainHyperparameters()
    assert recipe.checkpoint_every(hp, 100) == 25 and recipe.checkpoint_every(hp, 3) == 1
    assert recipe.checkpoint_every(TrainHyperparameters(checkpoint_steps=7), 100) == 7
    with pytest.raises(SpecError, match="checkpoint_steps must be an integer > 0"):
        TrainHyperparameters(checkpoint_steps=0)


def test_a_checkpoint_of_another_format_or_past_the_end_is_refused(base, dataset, tmp_path):
    _run(base, dataset, tmp_path / "whole", keep=tmp_path / "kept")
    folder = tmp_path / "kept" / "6"
    with pytest.raises(CheckpointError, match="this run has 5 steps"):
        _run(base, dataset, tmp_path / "short", resume_from=folder, max_steps=5)
    state = json.loads((folder / "trainer_state.json").read_text())
    (folder / "trainer_state.json").write_text(json.dumps({**state, "format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        _run(base, dataset, tmp_path / "other", resume_from=folder)


@pytest.mark.parametrize(("value", "seconds"), [(None, 1800.0), ("", 1800.0), ("600", 600.0), (" 0.5 ", 0.5), ("0", 0.0)])
def test_checkpoint_seconds_from_the_environment(value, seconds):
    assert recipe.checkpoint_seconds({} if value is None else {"PEFTHUB_CHECKPOINT_SECONDS": value}) == seconds


def test_a_worker_with_bad_checkpoint_seconds_does_not_start(tmp_path):
    for bad in ("30m", "-1", "nan"):
        env = {**os.environ, "PEFTHUB_TOKEN": "phub_unused", "PEFTHUB_CHECKPOINT_SECONDS": bad}
        done = subprocess.run([sys.executable, "-m", "pefthub_worker.cli", "-Q", "gpu"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"PEFTHUB_CHECKPOINT_SECONDS must be a number of seconds >= 0, got '{bad}'" in done.stderr
