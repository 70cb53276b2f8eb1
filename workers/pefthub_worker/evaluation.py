"""Score an adapter on a dataset: the recipe behind ``eval`` jobs; read it top to bottom.

Metrics (docs in README "Evaluating and comparing"):

- ``loss``: the mean cross-entropy over every label token of the scored rows (token-weighted, not a
  mean of row means), with exactly the training recipe's tokenisation, truncation and label masking
  (:func:`pefthub_worker.training.data.tokenize`; the recipe's own ``_evaluate`` computes it);
  ``perplexity`` = ``exp(loss)``; ``rows`` and ``tokens`` are what it was measured on.
- ``prompt``/``completion`` rows only: for each row, the reference ``R`` is the completion's tokens and the
  end-of-sequence token (the row's training labels) and ``L = min(len(R), max_new_tokens)``. Greedy
  decoding from the prompt's tokens yields ``G``, at most ``L`` tokens, ending early at EOS.
  ``exact_match`` is the fraction of rows with ``G == R[:L]``; ``token_accuracy`` is the number of positions
  ``i < L`` with ``G[i] == R[i]`` over the sum of every row's ``L`` (``reference_tokens``). Rows whose prompt
  has no token are scored for loss only (``generated_rows`` counts the others).

The base loads in full precision on CPU (never 4-bit: FINDINGS, ``Linear4bit`` eval on CPU) and in bf16 on
CUDA, whatever the adapter was trained with; a QLoRA adapter is a plain LoRA file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .training import data
from .training.recipe import Callbacks, Cancelled, _dtype_for, _evaluate

_NO_CALLBACKS = Callbacks()
#: at most one progress event this often
PROGRESS_SECONDS = 2.0


@dataclass
class GenerationScores:
    exact_match: float
    token_accuracy: float
    generated_rows: int
    reference_tokens: int


def evaluate(
    *,
    base_dir: Path,
    adapter_dir: Path,
    dataset_path: Path,
    max_rows: int = 1000,
    max_new_tokens: int = 64,
    max_seq_length: int = 512,
    batch_size: int = 8,
    callbacks: Callbacks = _NO_CALLBACKS,
) -> dict[str, float | int]:
    """The metrics of the adapter in ``adapter_dir`` on its base in ``base_dir``, on the file's first ``max_rows`` rows."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    emit = callbacks.on_event
    started = time.perf_counter()

    # -- 1. data: the recipe's reading, checking and tokenising -----------------------------
    rows, fmt = data.read_jsonl(dataset_path)
    rows = rows[:max_rows]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples, stats = data.tokenize(rows, fmt, tokenizer, max_seq_length=max_seq_length, name=Path(dataset_path).name)
    emit("log", {"level": "info", "message": (
        f"dataset {Path(dataset_path).name}: scoring {len(examples)} rows ({fmt}), {stats.tokens} tokens")})
    for note in stats.notes:
        emit("log", {"level": "warning", "message": note})
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    # -- 2. model: the base in full precision (bf16 on CUDA), the adapter on it -------------
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_dtype_for(device)).to(device)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    total = data.batches_per_epoch(examples, batch_size)
    pairs = generation_pairs(examples) if fmt == "prompt_completion" else []
    progress = _Progress(emit, total + len(pairs))

    # -- 3. loss and perplexity ---------------------------------------------------------------
    loss = token_loss(model, examples, batch_size, pad_id, device, callbacks, progress)
    metrics: dict[str, float | int] = {
        "rows": len(examples), "tokens": sum(_label_count(e) for e in examples),
        "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
    }

    # -- 4. greedy generation (prompt/completion rows) ----------------------------------------
    if pairs:
        scores = generation_scores(model, pairs, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                                   pad_id=pad_id, device=device, callbacks=callbacks, progress=progress)
        metrics.update(exact_match=scores.exact_match, token_accuracy=scores.token_accuracy,
                       generated_rows=scores.generated_rows, reference_tokens=scores.reference_tokens)
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    progress.done()
    return metrics


# --- steps ------------------------------------------------------------------------------------


class _Progress:
    """Metric events with ``step``/``total_steps`` (loss batches, then generated rows), at most every few seconds."""

    def __init__(self, emit: Any, total: int) -> None:
        self.emit, self.total, self.step, self.last = emit, max(total, 1), 0, time.monotonic()

    def advance(self) -> None:
        self.step += 1
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.done()

    def done(self) -> None:
        self.emit("metric", {"step": self.step, "total_steps": self.total})
        self.last = time.monotonic()


def _label_count(example: data.Example) -> int:
    """Label tokens the loss counts: the model predicts token i from those before it, so not the first."""
    return sum(1 for label in example.labels[1:] if label != data.IGNORE_INDEX)


def token_loss(model: Any, examples: list[data.Example], batch_size: int, pad_id: int, device: Any,
               callbacks: Callbacks = _NO_CALLBACKS, progress: _Progress | None = None) -> float:
    """The token-weighted mean loss, batch by batch (the recipe's ``_evaluate``), stopping between batches if asked."""
    loss_sum, n_total = 0.0, 0
    for start in range(0, len(examples), batch_size):
        if callbacks.should_stop():
            raise Cancelled(f"cancelled after {start} of {len(examples)} rows")
        batch = examples[start:start + batch_size]
        n = sum(_label_count(e) for e in batch)
        if n:
            loss_sum += _evaluate(model, batch, batch_size, pad_id, device) * n
            n_total += n
        if progress is not None:
            progress.advance()
    return loss_sum / max(n_total, 1)


def generation_pairs(examples: list[data.Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt tokens, reference tokens) of prompt/completion examples: the reference is what the labels hold.

    A prompt/completion example's labels are -100 on exactly the prompt's tokens, then the completion and EOS.
    """
    pairs = []
    for e in examples:
        k = next(i for i, label in enumerate(e.labels) if label != data.IGNORE_INDEX)
        if k > 0:  # an empty prompt gives the model nothing to continue
            pairs.append((e.input_ids[:k], e.labels[k:]))
    return pairs


def greedy(model: Any, prompt: list[int], n: int, *, eos_id: int | None, pad_id: int, device: Any) -> list[int]:
    """At most ``n`` greedily decoded tokens after ``prompt``, ending with EOS if the model emits it."""
    import torch

    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=0,
                             do_sample=False, num_beams=1, eos_token_id=eos_id, pad_token_id=pad_id)
    generated = out[0, len(prompt):].tolist()[:n]
    if eos_id is not None and eos_id in generated:
        generated = generated[:generated.index(eos_id) + 1]
    return generated


def generation_scores(model: Any, pairs: list[tuple[list[int], list[int]]], *, max_new_tokens: int,
                      eos_id: int | None, pad_id: int, device: Any, callbacks: Callbacks = _NO_CALLBACKS,
                      progress: _Progress | None = None) -> GenerationScores:
    """``exact_match`` and ``token_accuracy`` of greedy generations against references capped at ``max_new_tokens``."""
    exact = matched = reference_tokens = 0
    for i, (prompt, reference) in enumerate(pairs):
        if callbacks.should_stop():
            raise Cancelled(f"cancelled after generating for {i} of {len(pairs)} rows")
        cap = min(len(reference), max_new_tokens)
        expected = reference[:cap]
        generated = greedy(model, prompt, cap, eos_id=eos_id, pad_id=pad_id, device=device)
        exact += generated == expected
        matched += sum(1 for g, r in zip(generated, expected) if g == r)
        reference_tokens += cap
        if progress is not None:
            progress.advance()
    return GenerationScores(exact_match=exact / max(len(pairs), 1), token_accuracy=matched / max(reference_tokens, 1),
                            generated_rows=len(pairs), reference_tokens=reference_tokens)
