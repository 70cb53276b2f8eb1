"""The eval recipe's metrics on a tiny model, against answers known in advance.

A dataset whose completions ARE the adapter's greedy outputs scores an exact_match of 1.0; a reference
with one wrong token scores (L - 1) / L; the loss is recomputed here by hand from the logits.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from examples import tiny
from pefthub_worker.evaluation import evaluate, generation_scores, greedy
from pefthub_worker.training import Callbacks, Cancelled, data

CAP = 6


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base, tiny_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_adapter[0]).eval()
    return model, AutoTokenizer.from_pretrained(tiny_base)


def _greedy(model, tokenizer, prompt_ids, n):
    return greedy(model, prompt_ids, n, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                  device=torch.device("cpu"))


@pytest.fixture(scope="module")
def greedy_dataset(model_and_tokenizer, tmp_path_factory):
    """Prompt/completion rows whose completion is the adapter's greedy continuation (kept where text round-trips)."""
    model, tokenizer = model_and_tokenizer
    rows = []
    for line in tiny.corpus(60, seed=3):
        words = line.split()
        prompt = " ".join(words[: max(1, len(words) // 2)])
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        generated = _greedy(model, tokenizer, prompt_ids, CAP)
        body = [t for t in generated if t != tokenizer.eos_token_id]
        completion = tokenizer.decode(body)
        if body and tokenizer(completion, add_special_tokens=False)["input_ids"] == body:
            rows.append({"prompt": prompt, "completion": completion})
    assert len(rows) >= 5, rows  # enough rows whose text re-tokenises to the same tokens
    path = tmp_path_factory.mktemp("eval") / "greedy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, len(rows)


def _hand_loss(model, tokenizer, path, max_seq_length=512):
    """Token-weighted cross-entropy over every label token, one row at a time, from the logits."""
    rows, fmt = data.read_jsonl(path)
    examples, _ = data.tokenize(rows, fmt, tokenizer, max_seq_length=max_seq_length, name=path.name)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
            labels = torch.tensor(e.labels[1:])
            keep = labels != data.IGNORE_INDEX
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count, count


def test_completions_that_are_the_greedy_outputs_score_exact_match_one(tiny_base, tiny_adapter, greedy_dataset,
                                                                       model_and_tokenizer):
    path, n_rows = greedy_dataset
    metrics = evaluate(base_dir=tiny_base, adapter_dir=tiny_adapter[0], dataset_path=path, max_new_tokens=CAP,
                       batch_size=3)
    assert metrics["exact_match"] == 1.0 and metrics["token_accuracy"] == 1.0
    assert metrics["rows"] == metrics["generated_rows"] == n_rows
    assert metrics["reference_tokens"] <= n_rows * CAP
    loss, count = _hand_loss(*model_and_tokenizer, path)
    assert metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(loss, abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)


def test_one_wrong_token_costs_exact_match_and_one_token_of_accuracy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in ("the cat", "a ship sails", "we")]
    outputs = [_greedy(model, tokenizer, p, 4) for p in prompts]
    assert all(len(o) == 4 and tokenizer.eos_token_id not in o for o in outputs), outputs
    wrong = [*outputs[1][:3], (outputs[1][3] + 1) % 500 + 3]  # a different, ordinary token at the end
    longer = [*outputs[2], 7, 8, 9]  # a reference longer than the cap: only its first 4 tokens count
    pairs = [(prompts[0], outputs[0]), (prompts[1], wrong), (prompts[2], longer)]
    scores = generation_scores(model, pairs, max_new_tokens=4, eos_id=tokenizer.eos_token_id,
                               pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    assert scores.exact_match == pytest.approx(2 / 3)
    assert scores.reference_tokens == 12 and scores.token_accuracy == pytest.approx(11 / 12)


def test_text_rows_get_loss_and_perplexity_only_and_max_rows_caps(tiny_base, tiny_adapter, tmp_path,
                                                                   model_and_tokenizer):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in tiny.corpus(12, seed=5)))
    metrics = evaluate(base_dir=tiny_base, adapter_dir=tiny_adapter[0], dataset_path=path, max_rows=5)
    assert metrics["rows"] == 5 and "exact_match" not in metrics and "token_accuracy" not in metrics
    first5 = tmp_path / "first5.jsonl"
    first5.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))
    loss, count = _hand_loss(*model_and_tokenizer, first5)
    assert metrics["tokens"] == count and metrics["loss"] == pytest.approx(loss, abs=1e-5)


def test_a_cancel_stops_it_between_batches(tiny_base, tiny_adapter, greedy_dataset):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 1  # the second batch does not start

    with pytest.raises(Cancelled, match="after 2 of"):
        evaluate(base_dir=tiny_base, adapter_dir=tiny_adapter[0], dataset_path=greedy_dataset[0], batch_size=2,
                 callbacks=Callbacks(should_stop=should_stop))
