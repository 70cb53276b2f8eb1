"""From hyperparameters to peft configs: default target modules, checks against the base, QLoRA loading.

Default LoRA targets per ``config.model_type`` (the attention projections; anything not
listed gets ``"all-linear"``). IA3 uses peft's own per-architecture targets and marks the
feed-forward output projections as ``feedforward_modules`` (scaled on their input).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pefthub.protocol.errors import SpecError
from pefthub.protocol.peft import ALL_LINEAR, LORA_METHODS, VIRTUAL_TOKEN_METHODS, unmatched_target
from pefthub.protocol.specs import TrainHyperparameters

if TYPE_CHECKING:
    import torch

_ATTENTION_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: LoRA / DoRA / QLoRA targets when ``target_modules`` is null.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{arch: _ATTENTION_QKVO for arch in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
        "olmo", "olmo2", "granite", "cohere", "starcoder2", "stablelm")},
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}

#: Leaf names of feed-forward output projections: IA3 scales these on their input side.
_FEEDFORWARD_LEAVES = ("down_proj", "fc2", "w2", "dense_4h_to_h", "fc_out")
_FEEDFORWARD_EXTRA = {"gpt2": ["mlp.c_proj"]}

QLORA_SETTINGS = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


class QLoRAUnavailable(RuntimeError):
    """bitsandbytes is missing or cannot run 4-bit layers on this device."""

    code = "qlora_unavailable"


def default_target_modules(model_type: str, method: str) -> list[str] | str:
    """The targets used when ``hyperparameters.target_modules`` is null."""
    if method == "ia3":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3

        return list(IA3.get(model_type, ALL_LINEAR))
    return list(DEFAULT_TARGET_MODULES[model_type]) if model_type in DEFAULT_TARGET_MODULES else ALL_LINEAR


def resolve_target_modules(hp: TrainHyperparameters, method: str, model_type: str) -> list[str] | str | None:
    """What the adapter targets: the spec's choice or the architecture's default; None for virtual tokens."""
    if method in VIRTUAL_TOKEN_METHODS:
        return None
    return hp.target_modules if hp.target_modules is not None else default_target_modules(model_type, method)


def ia3_feedforward_modules(targets: list[str] | str, model_type: str) -> list[str] | str:
    """The subset of ``targets`` that are feed-forward output projections (peft needs it as a subset)."""
    extra = _FEEDFORWARD_EXTRA.get(model_type, [])
    if isinstance(targets, str):  # a regex or all-linear: describe the feed-forward layers by regex too
        names = "|".join(re.escape(n) for n in (*_FEEDFORWARD_LEAVES, *extra))
        return rf".*\.({names})"
    return [t for t in targets if t.split(".")[-1] in _FEEDFORWARD_LEAVES or t in extra]


# --- checking targets against the base, before loading its weights ----------------------


def _adaptable_types() -> tuple[type, ...]:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D)


def _linear_types() -> tuple[type, ...]:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def skeleton(base_dir: Path) -> torch.nn.Module:
    """The base model's module tree on the meta device: names and shapes, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_target_modules(model: torch.nn.Module, targets: list[str] | str | None) -> None:
    """Every target must name an adaptable module of ``model``, by peft's matching rules."""
    adaptable = [name for name, module in model.named_modules() if isinstance(module, _adaptable_types())]
    missing = unmatched_target(targets, adaptable)
    if missing is None:
        return
    linear_leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                            if isinstance(module, _linear_types())})
    where = "hyperparameters.target_modules"
    listing = f"its linear modules are: {', '.join(linear_leaves)}"
    if isinstance(targets, str):
        raise SpecError(where, f"{where}: the regex {targets!r} matches no linear module of the base model; {listing}")
    raise SpecError(where, f"{where}: the base model has no module `{missing}`; {listing}")


# --- peft configs -------------------------------------------------------------------------


def peft_config(method: str, hp: TrainHyperparameters, targets: list[str] | str | None, model_type: str) -> Any:
    """The peft config that trains ``method`` with ``hp``."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    task = TaskType.CAUSAL_LM
    if method in LORA_METHODS:
        return LoraConfig(
            r=hp.r, lora_alpha=hp.lora_alpha_resolved, lora_dropout=hp.lora_dropout, target_modules=targets,
            bias="none", use_dora=method == "dora", task_type=task,
        )
    if method == "ia3":
        return IA3Config(target_modules=targets, feedforward_modules=ia3_feedforward_modules(targets, model_type),
                         task_type=task)
    if method == "prefix_tuning":
        return PrefixTuningConfig(num_virtual_tokens=hp.num_virtual_tokens, task_type=task)
    if method == "prompt_tuning":
        return PromptTuningConfig(num_virtual_tokens=hp.num_virtual_tokens, prompt_tuning_init="RANDOM", task_type=task)
    raise SpecError("method", f"method {method!r} has no recipe")


# --- QLoRA --------------------------------------------------------------------------------


def require_bitsandbytes(device: torch.device, compute_dtype: torch.dtype) -> None:
    """Fail fast, before the base is loaded, if 4-bit layers cannot train on ``device``."""
    import torch

    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=compute_dtype, quant_type="nf4").to(device)
        layer.support_avx512bf16_for_cpu = False
        x = torch.randn(2, 64, device=device, dtype=compute_dtype, requires_grad=True)
        layer(x).float().sum().backward()
        if x.grad is None:
            raise RuntimeError("no gradient flows through a 4-bit layer")
    except Exception as exc:
        raise QLoRAUnavailable(f"qlora needs bitsandbytes with a supported device ({device.type}): "
                               f"{type(exc).__name__}: {exc}") from exc


def quantization_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**QLORA_SETTINGS, bnb_4bit_compute_dtype=compute_dtype)


def keep_4bit_layers_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights in eval-mode forwards on AVX512-BF16 CPUs.

    The repacked format has no autograd kernel: after any eval pass (a sanity check,
    ``generate()``, eval_loss) every LoRA parameter silently gets ``grad=None``.
    Returns how many layers were changed.
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
