"""The training recipe: data, model, train, evaluate, save; read it top to bottom.

A plain PyTorch loop (AdamW, linear warmup then linear decay, gradient accumulation,
clipping at 1.0): simpler and faster than the HF Trainer for adapters. Everything that
can fail on the inputs fails before the base model's weights are read: the whole
dataset is checked, then the target modules against the base's module tree. The
adapter is written to a temporary folder beside ``output_dir`` and moved into place
only when training succeeded, so a failed or cancelled run leaves no half-written adapter.

Every ``checkpoint_steps`` optimizer steps, and whenever ``checkpoint_seconds`` passed since
the last one, the whole training state is saved (:mod:`.checkpoint`) and handed to
``Callbacks.on_checkpoint``; ``train(..., resume_from=folder)`` continues such a state at its
next step, on the same micro-batch stream and random state: the same losses and weights as
a run that was never interrupted.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefthub.protocol.errors import SpecError
from pefthub.protocol.specs import TrainHyperparameters

from . import checkpoint, data, parent
from . import config as cfg

#: a checkpoint at least this often (seconds of training) whatever ``checkpoint_steps`` says
DEFAULT_CHECKPOINT_SECONDS = 1800.0
CHECKPOINT_SECONDS_ENV = "PEFTHUB_CHECKPOINT_SECONDS"


def checkpoint_seconds(environ: Mapping[str, str]) -> float:
    """PEFTHUB_CHECKPOINT_SECONDS from ``environ`` (seconds >= 0; 0: every step), else the default;
    :class:`SpecError` naming the variable for anything else (the worker checks it at start)."""
    value = environ.get(CHECKPOINT_SECONDS_ENV, "").strip()
    if not value:
        return DEFAULT_CHECKPOINT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SpecError(CHECKPOINT_SECONDS_ENV,
                        f"{CHECKPOINT_SECONDS_ENV} must be a number of seconds >= 0, got {value!r}")
    return seconds


@dataclass
class Callbacks:
    """How the recipe talks to its caller (the job runner, the CLI, a test)."""

    #: ``(type, data)`` with type ``"metric"`` (step, loss...), ``"log"`` (message, level) or ``"checkpoint"``
    on_event: Callable[[str, dict], None] = lambda type, data: None
    #: polled before every optimizer step; True stops the run with :class:`Cancelled`
    should_stop: Callable[[], bool] = lambda: False
    #: ``(folder, step, metrics)`` with a saved training state (:mod:`.checkpoint`); the folder is removed
    #: when it returns. None: no checkpoints are saved
    on_checkpoint: Callable[[Path, int, dict], None] | None = None


class Cancelled(Exception):
    """``should_stop()`` said stop; nothing was written to ``output_dir``."""

    code = "cancelled"


@dataclass
class TrainResult:
    output_dir: Path
    #: first_loss, final_loss, train_tokens, train_seconds, tokens_per_second, steps; with eval_split also
    #: eval_loss (after training) and eval_loss_before (the same rows before the first step)
    metrics: dict
    peft_type: str
    #: the 4-bit settings the base was loaded with (qlora), else None
    quantization: dict | None
    #: the trained PeftModel in eval mode, with ``train(..., keep_model=True)``
    model: Any = field(default=None, repr=False, compare=False)


_NO_CALLBACKS = Callbacks()


def train(
    *,
    method: str,
    hyperparameters: TrainHyperparameters,
    base_dir: Path,
    dataset_path: Path,
    output_dir: Path,
    callbacks: Callbacks = _NO_CALLBACKS,
    keep_model: bool = False,
    continue_from: Path | None = None,
    resume_from: Path | None = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
) -> TrainResult:
    """Train a ``method`` adapter on the base in ``base_dir`` and save it to ``output_dir``.

    With ``continue_from`` (a saved adapter's folder, of the shape ``hyperparameters`` build)
    training starts from that adapter's weights instead of a fresh adapter's.

    With ``keep_model`` the result also holds the trained ``PeftModel`` (in eval mode), for
    tests and notebooks; otherwise it is released when training ends. ``resume_from``: a
    checkpoint folder of a run of the same spec, continued at its next step.
    """
    import torch

    hp = hyperparameters
    hp.check_method(method)
    base_dir, dataset_path, output_dir = Path(base_dir), Path(dataset_path), Path(output_dir)
    emit = callbacks.on_event

    def log(message: str, level: str = "info") -> None:
        emit("log", {"message": message, "level": level})

    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"output folder {output_dir} exists and is not empty")

    # -- 1. data: the whole file is checked before the model is touched --------------------
    rows, fmt = data.read_jsonl(dataset_path)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples, stats = data.tokenize(rows, fmt, tokenizer, max_seq_length=hp.max_seq_length, name=dataset_path.name)
    train_set, eval_set = data.split(examples, hp.eval_split, hp.seed)
    rendering = f", chat rendered as {stats.chat_rendering}" if fmt == "messages" else ""
    packing = hp.packs(method, fmt)
    log(f"dataset {dataset_path.name}: {stats.rows} rows ({fmt}{rendering}), {stats.tokens} tokens; "
        f"{len(train_set)} to train, {len(eval_set)} held out; "
        + (f"packed into sequences of up to {hp.max_seq_length} tokens" if packing else "not packed"))
    for note in stats.notes:
        log(note, "warning")
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    # -- 2. model: check targets on the bare module tree, then load and wrap ---------------
    model_type = AutoConfig.from_pretrained(base_dir).model_type
    targets = cfg.resolve_target_modules(hp, method, model_type)
    cfg.check_target_modules(cfg.skeleton(base_dir), targets)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    model, quantization = _load_base(base_dir, method, hp, device, packing=packing)
    architecture = type(model).__name__
    from peft import get_peft_model

    torch.manual_seed(hp.seed)  # adapter init depends on the seed alone, not on how the base loaded
    model = get_peft_model(model, cfg.peft_config(method, hp, targets, model_type))
    trainable, total = model.get_nb_trainable_parameters()
    log(f"{architecture} on {device.type} ({_dtype_for(device)}, {model.config._attn_implementation} attention): "
        f"{method} on {targets or 'virtual tokens'}; "
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%)")
    if continue_from is not None:
        loaded = parent.load_parent(model, Path(continue_from))
        log(f"started from the parent adapter's weights ({loaded} tensors)")

    # -- 3. train -------------------------------------------------------------------------
    metrics: dict[str, Any] = {}
    if eval_set and resume_from is None:  # a resumed run carries it in its checkpoint
        metrics["eval_loss_before"] = _evaluate(model, eval_set, hp.batch_size, pad_id, device)
        emit("metric", {"step": 0, "eval_loss": metrics["eval_loss_before"]})
    metrics.update(_train_loop(model, train_set, hp, pad_id, device, callbacks, before=metrics, packing=packing,
                               resume_from=resume_from, checkpoint_seconds=checkpoint_seconds))

    # -- 4. evaluate ----------------------------------------------------------------------
    if eval_set:
        metrics["eval_loss"] = _evaluate(model, eval_set, hp.batch_size, pad_id, device)
        emit("metric", {"step": metrics["steps"], "eval_loss": metrics["eval_loss"]})
    model.eval()
    if callbacks.should_stop():
        raise Cancelled(f"cancelled after step {metrics['steps']}, before saving")

    # -- 5. save: into a temporary folder, moved into place only when complete -------------
    _save_atomically(model, output_dir)
    peft_type = model.peft_config["default"].peft_type
    log(f"saved the adapter to {output_dir}")
    return TrainResult(output_dir=output_dir, metrics=metrics, peft_type=getattr(peft_type, "value", str(peft_type)),
                       quantization=quantization, model=model if keep_model else None)


# --- steps ------------------------------------------------------------------------------------


def _dtype_for(device: Any) -> Any:
    """bf16 weights where the GPU has it; fp32 on CPU (exact, and as fast for small models)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _attention_for(device: Any, dtype: Any, packing: bool) -> str | None:
    """flash_attention_2 for packed rows where CUDA and the flash-attn package have it, else the model's default.

    Flash-attention's varlen kernel reads the rows' boundaries from position_ids and computes
    no masked-out pairs; sdpa and eager get a block-diagonal mask from transformers instead.
    """
    import torch
    from transformers.utils import is_flash_attn_2_available

    if packing and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return None


def _load_base(base_dir: Path, method: str, hp: TrainHyperparameters, device: Any, *,
               packing: bool = False) -> tuple[Any, dict | None]:
    from transformers import AutoModelForCausalLM

    dtype = _dtype_for(device)
    attention = _attention_for(device, dtype, packing)
    gc_kwargs = {"use_reentrant": False}
    if method != "qlora":
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, attn_implementation=attention).to(device)
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
        model.config.use_cache = False
        return model, None

    from peft import prepare_model_for_kbit_training

    cfg.require_bitsandbytes(device, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=cfg.quantization_config(dtype), dtype=dtype, attn_implementation=attention,
        device_map={"": device.index if device.type == "cuda" else "cpu"},
    )
    cfg.keep_4bit_layers_trainable(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp.gradient_checkpointing,
                                            gradient_checkpointing_kwargs=gc_kwargs)
    model.config.use_cache = False
    return model, {**cfg.QLORA_SETTINGS, "compute_dtype": str(dtype).removeprefix("torch.")}


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _label_count(labels: Any) -> int:
    return int((labels[:, 1:] != data.IGNORE_INDEX).sum())


def checkpoint_every(hp: TrainHyperparameters, total: int) -> int:
    """Optimizer steps between checkpoints: ``checkpoint_steps``, or four per run."""
    return hp.checkpoint_steps or max(1, total // 4)


def _train_loop(model: Any, examples: list[data.Example], hp: TrainHyperparameters, pad_id: int, device: Any,
                callbacks: Callbacks, *, before: dict, packing: bool, resume_from: Path | None,
                checkpoint_seconds: float) -> dict:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    pack_length = hp.max_seq_length if packing else None
    per_epoch = data.batches_per_epoch(examples, hp.batch_size, pack_length=pack_length)
    total = hp.max_steps or max(1, math.ceil(hp.epochs * per_epoch / hp.gradient_accumulation_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, hp.warmup_steps, total))
    stream = data.micro_batches(examples, hp.batch_size, hp.seed, pack_length=pack_length)
    # flash-attention's varlen route reads row boundaries from position_ids only in a batch of one sequence
    flat = packing and model.config._attn_implementation.startswith("flash_attention")

    at = checkpoint.LoopState(metrics=dict(before))
    if resume_from is not None:
        at = checkpoint.load_loop(resume_from)
        if at.step >= total:
            raise checkpoint.CheckpointError(f"the checkpoint is at step {at.step}, but this run has {total} steps")
        checkpoint.restore(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, device=device)
        for _ in range(at.consumed):  # the stream is deterministic: skip what the checkpointed run consumed
            next(stream)
        callbacks.on_event("log", {"message": f"resuming from step {at.step} of {total}", "level": "info"})
    every = checkpoint_every(hp, total)

    model.train()
    started = window_started = last_checkpoint = time.perf_counter()
    for step in range(at.step + 1, total + 1):
        if callbacks.should_stop():
            raise Cancelled(f"cancelled before step {step} of {total}")
        micro = [batch for _, batch in (next(stream) for _ in range(hp.gradient_accumulation_steps))]
        useful = [sum(len(e.input_ids) for seq in batch for e in seq) for batch in micro]  # tokens that are not padding
        window = [_collate_on(batch, pad_id, device, packed=packing, flat=flat) for batch in micro]
        at.consumed += len(window)
        n_labels = sum(_label_count(b["labels"]) for b in window)
        loss_sum = 0.0
        for batch, step_tokens in zip(window, useful):
            n = _label_count(batch["labels"])
            if n == 0:
                continue
            out = model(**batch)
            # token-weighted mean over the whole accumulation window
            (out.loss * (n / n_labels)).backward()
            loss_sum += float(out.loss.detach()) * n
            at.tokens += step_tokens
            at.window_tokens += step_tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        at.step, at.loss = step, loss_sum / n_labels
        if step == 1:
            at.first_loss = at.loss
        at.window_losses.append(at.loss)
        now = time.perf_counter()
        if step % hp.logging_steps == 0 or step == total:
            callbacks.on_event("metric", {
                "step": step, "total_steps": total, "epoch": round(at.consumed / per_epoch, 4),
                "loss": sum(at.window_losses) / len(at.window_losses), "learning_rate": learning_rate,
                "tokens_per_second": round(at.window_tokens / max(now - window_started, 1e-9), 1),
            })
            at.window_losses, at.window_tokens, window_started = [], 0, now
        if callbacks.on_checkpoint is not None and step < total and (
                step % every == 0 or now - last_checkpoint >= checkpoint_seconds):
            _checkpoint(model, optimizer, scheduler, at, started, callbacks.on_checkpoint,
                        {"loss": at.loss, "learning_rate": learning_rate, "epoch": round(at.consumed / per_epoch, 4),
                         "train_tokens": at.tokens})
            last_checkpoint = time.perf_counter()
    seconds = at.train_seconds + time.perf_counter() - started
    return {**at.metrics, "first_loss": at.first_loss, "final_loss": at.loss, "train_tokens": at.tokens,
            "train_seconds": round(seconds, 3), "tokens_per_second": round(at.tokens / max(seconds, 1e-9), 1),
            "steps": total}


def _checkpoint(model: Any, optimizer: Any, scheduler: Any, at: checkpoint.LoopState, started: float,
                on_checkpoint: Callable[[Path, int, dict], None], metrics: dict) -> None:
    """Save the state after step ``at.step`` into a temporary folder and hand it over (synchronously: the
    caller uploads it before the next step, so what it holds is never changed under it)."""
    folder = Path(tempfile.mkdtemp(prefix=f"pefthub-checkpoint-{at.step}-"))
    try:
        saved = checkpoint.LoopState(**{**vars(at), "train_seconds": at.train_seconds + time.perf_counter() - started})
        checkpoint.save(folder, model=model, optimizer=optimizer, scheduler=scheduler, loop=saved)
        on_checkpoint(folder, at.step, metrics)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _collate_on(batch: list[list[data.Example]], pad_id: int, device: Any, *, packed: bool = False,
                flat: bool = False) -> dict:
    """A micro-batch as tensors on ``device``; ``flat`` joins its packed sequences into one, unpadded."""
    if flat:
        batch = [[e for seq in batch for e in seq]]
    return {k: v.to(device) for k, v in data.collate(batch, pad_id, packed=packed).items()}


def _evaluate(model: Any, examples: list[data.Example], batch_size: int, pad_id: int, device: Any) -> float:
    """Token-weighted mean loss over ``examples``, in eval mode without gradients."""
    import torch

    was_training = model.training
    model.eval()
    loss_sum, n_total = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = _collate_on([[e] for e in examples[start:start + batch_size]], pad_id, device)
            n = _label_count(batch["labels"])
            if n:
                loss_sum += float(model(**batch).loss) * n
                n_total += n
    model.train(was_training)
    return loss_sum / max(n_total, 1)


def _save_atomically(model: Any, output_dir: Path) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
