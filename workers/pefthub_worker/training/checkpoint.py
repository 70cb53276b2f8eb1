"""A resumable training state as plain files: safetensors for tensors, JSON for the rest, never pickle.

A checkpoint folder holds what ``save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``) and beside it:

- ``optimizer.safetensors``: every tensor of the optimizer's per-parameter state
  (AdamW: ``<i>.exp_avg``, ``<i>.exp_avg_sq``, ``<i>.step``, ``i`` the index of the
  trainable parameter in ``model.parameters()`` order);
- ``rng.safetensors``: torch's CPU generator state and each CUDA device's;
- ``trainer_state.json``: the optimizer's ``param_groups``, the scheduler's state, Python's
  ``random`` state and the loop's position (optimizer step, micro-batches consumed,
  running metrics).

A checkpoint is written at the end of an optimizer step, so loading it and running the
same loop from ``step + 1`` on the same micro-batch stream (fast-forwarded by the
micro-batches consumed) gives the weights an uninterrupted run gives.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: bump when the folder's layout changes; a checkpoint of another format is not resumed
FORMAT = 1
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


class CheckpointError(ValueError):
    """The checkpoint cannot be resumed (another format, or it does not fit this run)."""

    code = "checkpoint_invalid"


@dataclass
class LoopState:
    """Where the training loop stands after optimizer step ``step``."""

    step: int = 0
    consumed: int = 0  # micro-batches taken from the stream
    tokens: int = 0
    first_loss: float = float("nan")
    loss: float = float("nan")
    train_seconds: float = 0.0  # training time of earlier attempts
    window_losses: list[float] = field(default_factory=list)
    window_tokens: int = 0
    #: metrics computed before the loop (eval_loss_before): kept, not computed again on a trained model
    metrics: dict[str, Any] = field(default_factory=dict)


def save(folder: Path, *, model: Any, optimizer: Any, scheduler: Any, loop: LoopState) -> None:
    """Write the whole training state into the empty or missing ``folder``."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, folder / OPTIMIZER_FILE)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, folder / RNG_FILE)
    version, internal, gauss = random.getstate()
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (folder / STATE_FILE).write_text(json.dumps({
        "format": FORMAT, "loop": asdict(loop), "optimizer": {"param_groups": state["param_groups"], "scalars": scalars},
        "scheduler": scheduler_state, "python_random": [version, list(internal), gauss],
    }, indent=1, allow_nan=True))


def load_loop(folder: Path) -> LoopState:
    """The loop position a checkpoint holds; :class:`CheckpointError` for another format."""
    state = _state(folder)
    return LoopState(**state["loop"])


def restore(folder: Path, *, model: Any, optimizer: Any, scheduler: Any, device: Any) -> None:
    """Load a checkpoint's adapter weights, optimizer, scheduler and RNG states into a freshly built run."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    state = _state(folder)
    weights = load_file(folder / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, weights)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
    if unexpected:
        raise CheckpointError(f"the checkpoint's adapter does not fit this model (e.g. `{unexpected[0]}`)")
    tensors = load_file(folder / OPTIMIZER_FILE)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    if any(index >= n_params for index in per_param):
        raise CheckpointError(f"the checkpoint's optimizer holds state for more than this run's {n_params} parameters")
    # load_state_dict moves each state tensor to its parameter's device (the step counters stay on the CPU)
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    rng = load_file(folder / RNG_FILE)
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in rng]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))


def _state(folder: Path) -> dict:
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the checkpoint's {STATE_FILE}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"the checkpoint is of format {state.get('format') if isinstance(state, dict) else '?'}, "
                              f"this worker resumes format {FORMAT}")
    return state
