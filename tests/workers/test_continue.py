"""The recipe continuing an adapter: its first step starts from the parent's weights, for every method.

The training rows are one batch (16 rows, batch size 16, no dropout on the continued run),
so a continued run's first loss is the parent adapter's loss on those rows, which the test
computes itself; a fresh adapter's first loss on them is well above.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from examples import tiny
from pefthub.protocol.errors import SpecError
from pefthub_worker.training import Callbacks, data, recipe, train
from tests.workers.test_training import hyper, needs_bnb

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ONE_BATCH = {"batch_size": 16, "max_seq_length": 64, "seed": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny.make_tiny_llama(tmp_path_factory.mktemp("continue") / "llama-tiny")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return tiny.make_dataset(tmp_path_factory.mktemp("rows") / "train.jsonl", rows=16)


def run(method: str, base: Path, dataset: Path, out: Path, events: list | None = None, *,
        continue_from: Path | None = None, **overrides):
    """test_training's run, with ``continue_from``."""
    on_event = (lambda type, data: events.append((type, data))) if events is not None else (lambda type, data: None)
    result = train(method=method, hyperparameters=hyper(method, **overrides), base_dir=base, dataset_path=dataset,
                   output_dir=out, callbacks=Callbacks(on_event=on_event), keep_model=True, continue_from=continue_from)
    return result, result.model


def loss_on_all_rows(model, base: Path, rows: Path) -> float:
    """The model's token-weighted loss on every row of ``rows`` as one batch, in eval mode: what step 1 sees."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples, _ = data.tokenize(*data.read_jsonl(rows), tokenizer, max_seq_length=64, name=rows.name)
    return recipe._evaluate(model, examples, len(examples), tokenizer.pad_token_id, torch.device("cpu"))


def _no_dropout(method: str) -> dict:
    return {"lora_dropout": 0.0} if method in ("lora", "dora", "qlora") else {}


@pytest.mark.parametrize(("parent_method", "method"), [
    ("lora", "lora"), ("dora", "dora"), ("ia3", "ia3"), ("prefix_tuning", "prefix_tuning"),
    ("prompt_tuning", "prompt_tuning"),
    pytest.param("lora", "qlora", marks=needs_bnb),  # a LoRA file continues on a 4-bit base
])
def test_a_continued_run_starts_at_the_parents_loss(parent_method, method, base, rows, tmp_path):
    parent, parent_model = run(parent_method, base, rows, tmp_path / "parent", max_steps=12, **ONE_BATCH)
    expected = loss_on_all_rows(parent_model, base, rows)
    fresh = parent.metrics["first_loss"]  # a fresh adapter's first loss on the same rows
    assert expected < fresh - 0.05, (expected, parent.metrics)  # the parent learned

    events: list = []
    continued, _ = run(method, base, rows, tmp_path / "continued", events, max_steps=2, continue_from=parent.output_dir,
                       **ONE_BATCH, **_no_dropout(method))
    first = continued.metrics["first_loss"]
    # 4-bit weights move the loss a little; otherwise the forward is the parent's, to float noise
    assert first == pytest.approx(expected, abs=0.05 if method == "qlora" else 1e-4), (first, expected)
    assert first < fresh - (fresh - expected) / 2, (first, fresh)
    assert any(t == "log" and "started from the parent adapter's weights" in d["message"] for t, d in events)


def test_same_seed_same_continued_adapter(base, rows, tmp_path):
    parent, _ = run("lora", base, rows, tmp_path / "parent", max_steps=3, r=4, **ONE_BATCH)
    for name in ("a", "b"):
        run("lora", base, rows, tmp_path / name, max_steps=3, r=4, continue_from=parent.output_dir, **ONE_BATCH)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["peft_type"] == "LORA"


def test_a_parent_of_another_shape_or_scaling_is_refused_before_training(base, rows, tmp_path):
    parent, _ = run("lora", base, rows, tmp_path / "parent", max_steps=1, r=4, **ONE_BATCH)
    with pytest.raises(SpecError) as refused:
        run("lora", base, rows, tmp_path / "wider", max_steps=1, r=8, continue_from=parent.output_dir, **ONE_BATCH)
    assert refused.value.field == "continue_from"
    assert "shapes differ for `model.layers.0.self_attn.k_proj.lora_A.weight` ([4, 64], here [8, 64])" \
        in refused.value.message, refused.value.message
    with pytest.raises(SpecError) as refused:
        run("lora", base, rows, tmp_path / "fewer", max_steps=1, r=4, target_modules=["q_proj"],
            continue_from=parent.output_dir, **ONE_BATCH)
    assert "it has `model.layers.0.self_attn.k_proj.lora_A.weight`" in refused.value.message, refused.value.message

    config = json.loads((parent.output_dir / "adapter_config.json").read_text())
    (parent.output_dir / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(SpecError) as refused:
        run("lora", base, rows, tmp_path / "rslora", max_steps=1, r=4, continue_from=parent.output_dir, **ONE_BATCH)
    assert "rsLoRA scaling (use_rslora)" in refused.value.message
    assert not any((tmp_path / n).exists() for n in ("wider", "fewer", "rslora"))


def test_the_local_cli_continues_a_folder_and_refuses_one_of_another_shape(base, rows, tmp_path, capsys):
    from pefthub_worker.training.__main__ import main as cli_main

    parent, parent_model = run("lora", base, rows, tmp_path / "parent", max_steps=6, r=4, **ONE_BATCH)
    common = ["--base", str(base), "--data", str(rows), "--continue-from", str(parent.output_dir),
              *(f"--set={k}={v}" for k, v in ONE_BATCH.items()), "--set", "max_steps=1", "--set", "lora_dropout=0"]
    capsys.readouterr()
    assert cli_main([*common, "--out", str(tmp_path / "a"), "--set", "r=4"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])["data"]
    assert result["metrics"]["first_loss"] == pytest.approx(loss_on_all_rows(parent_model, base, rows), abs=1e-4)
    assert cli_main([*common, "--out", str(tmp_path / "b"), "--set", "r=2"]) == 2
    assert "continue_from: the adapter's weights do not fit" in capsys.readouterr().err
