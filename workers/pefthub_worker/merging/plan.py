"""What a merge will do: the adapters read and checked, and for each base tensor the edits to apply.

Everything that can refuse a merge on the adapters' account refuses here, before a byte is
written: adapters that add virtual tokens, LoRA options whose adapters are not ``W + ΔW``,
modules the base does not have, shapes that do not fit it. The rank, alpha and orientation
rules are peft 0.21's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pefthub.protocol.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from pefthub.protocol.peft import MERGE_JOB_TYPES, PROMPT_LEARNING_TYPES
from pefthub.protocol.safetensors import Tensor

#: adapters that add virtual tokens or a prompt rather than weight changes
VIRTUAL_TOKEN_TYPES = PROMPT_LEARNING_TYPES | {"ADAPTION_PROMPT"}
#: LoRA options whose adapters are not "W + ΔW": their merge needs code this package does not have
UNSUPPORTED_LORA_OPTIONS = (
    "use_qalora", "layer_replication", "target_parameters", "trainable_token_indices", "megatron_config",
    "alora_invocation_tokens", "use_bdlora", "arrow_config", "velora_config", "monteclora_config",
    "kasa_config",
)
#: values of init_lora_weights that change the base weights as well as adding the adapter
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")

#: the parts of a LoRA, DoRA or IA3 module, as peft names its saved tensors
_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector|ia3_l)$"
)
#: tensors of adapter kinds this package does not merge
_OTHER_PART = re.compile(r"(^|\.)(lora_|ia3_|trainable_tokens|vera_|hada_|lokr_)")
_PEFT_PREFIX = "base_model.model."


class MergeError(ValueError):
    """A merge that cannot be done; the message names the adapter, module or field and says what to do."""


def read_json(path: Path, owner: str) -> Any:
    """``path`` decoded; a file that is not JSON is ``owner``'s fault, and the message says so."""
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise MergeError(f"{owner}: {path.name} is not valid JSON ({exc})") from None


@dataclass
class Adapter:
    """One adapter folder, read: its config and its tensors as float32."""

    path: Path
    #: the adapter's weight in the merge
    weight: float
    #: where it was given, from 0: its place in messages and in :class:`Edit`
    position: int
    config: dict[str, Any]
    #: module name -> its parts (``lora_A.weight``, ``lora_B.weight``, ``ia3_l`` ...)
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: base tensor name -> a whole tensor that replaces it (modules_to_save, saved embeddings, bias="all")
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"adapter {self.position + 1} `{self.path}`"


@dataclass
class Edit:
    """One adapter's change to one base tensor.

    ``kind``: ``lora``, ``dora`` or ``ia3`` on a weight, ``bias`` on its bias, ``replace`` by a whole tensor.
    """

    kind: str
    #: the adapter's position
    adapter: int
    tensors: dict[str, torch.Tensor]
    scaling: float = 1.0
    #: the base stores this weight (in, out), like GPT-2's Conv1D
    fan_in_fan_out: bool = False


def load_adapter(path: Path, weight: float, position: int) -> Adapter:
    """Read one adapter folder (config + tensors, as float32) and refuse what cannot be merged."""
    adapter = Adapter(path=path, weight=weight, position=position, config={})
    label = adapter.label
    if not (path / ADAPTER_CONFIG).is_file():
        raise MergeError(f"{label} has no {ADAPTER_CONFIG}: is it a peft adapter folder?")
    adapter.config = read_json(path / ADAPTER_CONFIG, label)
    _refuse_unmergeable(adapter.config, label)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise MergeError(f"{label} has no {ADAPTER_WEIGHTS} (pickled .bin adapters are not read)")

    for saved, tensor in load_file(path / ADAPTER_WEIGHTS).items():
        key = saved.removeprefix(_PEFT_PREFIX)
        if not torch.isfinite(tensor).all():
            raise MergeError(f"{label}: tensor `{key}` holds NaN or inf; the adapter is broken")
        part = _PART.match(key)
        if part:
            adapter.modules.setdefault(part["module"], {})[part["part"]] = tensor.float()
        elif _OTHER_PART.search(key):
            raise MergeError(f"{label}: tensor `{key}` is an adapter part the merger does not know")
        else:  # modules_to_save, saved embedding layers, bias="all": whole tensors that replace the base's
            adapter.replacements[key.replace(".base_layer.", ".")] = tensor.float()
    if not adapter.modules and not adapter.replacements:
        raise MergeError(f"{label} has no tensors")
    return adapter


def _refuse_unmergeable(config: dict[str, Any], label: str) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type in VIRTUAL_TOKEN_TYPES:
        kind = peft_type.lower().replace("_", " ")
        raise MergeError(f"{label} is {kind}: it adds virtual tokens, not weight changes, and cannot be "
                         "merged; serve it with the base and peft instead")
    if peft_type not in MERGE_JOB_TYPES:
        raise MergeError(f"{label} has peft_type `{peft_type}`: the merger handles LoRA, DoRA and IA3")
    unsupported = [key for key in UNSUPPORTED_LORA_OPTIONS if config.get(key)]
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS):
        unsupported.append(f"init_lora_weights={init}")
    if unsupported:
        raise MergeError(f"{label} uses {', '.join(unsupported)}: such adapters cannot be merged here")


def plan_edits(adapters: list[Adapter], base: dict[str, Tensor], *, exact: bool) -> dict[str, list[Edit]]:
    """base tensor name -> the edits to apply to it, checked against the base's names and shapes.

    ``exact``: one adapter, weight 1.0, combination ``linear``; only then may DoRA, IA3, lora_bias
    and replaced tensors merge, as peft's ``merge_and_unload()`` would.
    """
    plan: dict[str, list[Edit]] = {}
    for adapter in adapters:
        label = adapter.label
        for key, tensor in adapter.replacements.items():
            name = base_name(key, base, label)
            if tuple(tensor.shape) != base[name].shape:
                raise MergeError(f"{label} replaces `{name}` with shape {list(tensor.shape)} but the base's "
                                 f"is {list(base[name].shape)} (a resized vocabulary cannot be merged)")
            plan.setdefault(name, []).append(Edit("replace", adapter.position, {"value": tensor}))

        for module, parts in adapter.modules.items():
            name = base_name(f"{module}.weight", base, label)
            edit = _module_edit(adapter, module, parts, list(base[name].shape), exact)
            plan.setdefault(name, []).append(edit)
            # lora_bias adds to the module's bias; IA3 on a non-feedforward module (out, 1) scales it
            scales_outputs = "ia3_l" in parts and parts["ia3_l"].shape[0] != 1
            if "lora_B.bias" not in parts and not scales_outputs:
                continue
            bias = name.removesuffix(".weight") + ".bias"
            if bias in base:
                plan.setdefault(bias, []).append(Edit("bias", adapter.position, parts, edit.scaling))
            elif "lora_B.bias" in parts:
                raise MergeError(f"{label} has lora_bias on `{module}` but the base has no `{bias}`")
    return plan


def _module_edit(adapter: Adapter, module: str, parts: dict[str, torch.Tensor], shape: list[int],
                 exact: bool) -> Edit:
    where = f"{adapter.label}, module `{module}`"
    config = adapter.config
    config_fif = bool(config.get("fan_in_fan_out"))

    if "ia3_l" in parts:
        if not exact:
            raise MergeError(f"{adapter.label} is IA3: it can only be merged alone, with weight 1.0 "
                             "and combination linear")
        # peft's shapes: (1, in) on feedforward modules (scales inputs), else (out, 1)
        n = parts["ia3_l"].numel()
        if parts["ia3_l"].shape[0] == 1:
            fif = orientation(shape, None, n, config_fif, where)
        else:
            fif = orientation(shape, n, None, config_fif, where)
        return Edit("ia3", adapter.position, parts, 1.0, fif)

    embedding = "lora_embedding_A" in parts
    a = parts.get("lora_A.weight", parts.get("lora_embedding_A"))
    b = parts.get("lora_B.weight", parts.get("lora_embedding_B"))
    if a is None or b is None or a.dim() != 2 or b.dim() != 2:
        raise MergeError(f"{where}: needs 2-D lora_A and lora_B (found {sorted(parts)}); "
                         "convolution LoRA is not merged here")
    r = pattern_value(config.get("rank_pattern") or {}, module, config.get("r", a.shape[0]))
    if r != a.shape[0]:
        raise MergeError(f"{where}: rank {r} from the config (r/rank_pattern) "
                         f"but lora_A has {a.shape[0]} rows")
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", r))
    if config.get("use_rslora"):
        scaling = alpha / math.sqrt(r)
    else:
        scaling = alpha / r
    # an embedding's LoRA is stored (in, out)
    fif = orientation(shape, b.shape[0], a.shape[1], config_fif or embedding, where)

    tensors = {"A": a, "B": b}
    kind = "lora"
    if "lora_magnitude_vector" in parts:
        tensors["m"] = parts["lora_magnitude_vector"]
        kind = "dora"
    if not exact and (kind == "dora" or "lora_B.bias" in parts):
        feature = "DoRA" if kind == "dora" else "lora_bias"
        raise MergeError(f"{where} uses {feature}: it can only be merged alone, with weight 1.0 "
                         "and combination linear")
    return Edit(kind, adapter.position, tensors, scaling, fif)


def orientation(shape: list[int], out_f: int | None, in_f: int | None, config_fif: bool, where: str) -> bool:
    """Whether the base stores this weight (in, out) like GPT-2's Conv1D; the config decides only square ones.

    ``None`` stands for a size the adapter does not fix (an IA3 vector knows one side only).
    """
    fits = []
    if len(shape) == 2:
        for fif in (False, True):
            wanted = (in_f, out_f) if fif else (out_f, in_f)
            if all(want is None or want == have for have, want in zip(shape, wanted)):
                fits.append(fif)
    if not fits:
        raise MergeError(f"{where}: adapter shapes (out {out_f}, in {in_f}) "
                         f"do not fit the base tensor {shape}")
    if len(fits) == 2:
        return config_fif
    return fits[0]


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the value of the first key matching the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def base_name(key: str, base: dict[str, Any], label: str) -> str:
    """The base tensor ``key`` refers to, whether or not the base was saved with a leading ``model.``."""
    for name in (key, key.removeprefix("model."), f"model.{key}"):
        if name in base:
            return name
    module = key.rsplit(".", 1)[0]
    raise MergeError(f"{label} changes `{module}` but the base has no tensor `{key}`: "
                     "was it trained on another base?")
