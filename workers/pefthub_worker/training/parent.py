"""Continuing an adapter: the parent's weights loaded into the fresh peft model the recipe built.

The recipe builds the adapter from the job's hyperparameters, and the hub filled the
parent's ``r``, ``lora_alpha``, target modules or virtual tokens into them at submit, so
the continued adapter's config is the job's own and its weights start as the parent's.
Loaded after the seeded init, so the random stream (dropout, shuffling) is a fresh run's:
same seed, same result. A parent the fresh model would not reproduce exactly (other
tensors or shapes, or a scaling the recipe does not train) is refused before any step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pefthub.protocol.errors import SpecError
from pefthub.protocol.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS

#: adapter_config.json options that change what the same weights compute, and the recipe never sets
_SCALING_OPTIONS = {"use_rslora": "rsLoRA scaling (use_rslora)", "alpha_pattern": "per-module alphas (alpha_pattern)",
                    "rank_pattern": "per-module ranks (rank_pattern)"}
#: names listed in a refusal
_SHOWN = 3


def _name(key: str) -> str:
    """A tensor as the base model names its module (peft's own prefix left off)."""
    return key.removeprefix("base_model.model.")


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(f"`{_name(n)}`" for n in names[:_SHOWN]) + more


def load_parent(model: Any, folder: Path) -> int:
    """Load the adapter saved in ``folder`` into ``model`` (a fresh PeftModel); returns how many tensors it set."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    where = "continue_from"
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    for key, what in _SCALING_OPTIONS.items():
        if config.get(key):
            raise SpecError(where, f"{where}: the adapter uses {what}, which the hub's recipe does not train, so its "
                                   "weights would compute something else here; train a fresh adapter instead")
    parent = load_file(folder / ADAPTER_WEIGHTS, device="cpu")
    fresh = get_peft_model_state_dict(model)
    missing = sorted(set(fresh) - set(parent))
    extra = sorted(set(parent) - set(fresh))
    reshaped = sorted(k for k in fresh.keys() & parent.keys() if tuple(fresh[k].shape) != tuple(parent[k].shape))
    if missing or extra or reshaped:
        problems = [f"it lacks {_listed(missing)}" if missing else "", f"it has {_listed(extra)} besides" if extra else "",
                    "shapes differ for " + ", ".join(f"`{_name(k)}` ({list(parent[k].shape)}, here {list(fresh[k].shape)})"
                                                     for k in reshaped[:_SHOWN]) if reshaped else ""]
        raise SpecError(where, f"{where}: the adapter's weights do not fit the adapter this job builds: "
                               f"{'; '.join(p for p in problems if p)}; train a fresh adapter instead")
    set_peft_model_state_dict(model, parent)
    return len(parent)
