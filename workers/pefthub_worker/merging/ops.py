"""The tensor math of a merge, in float32: one base tensor and the edits planned for it.

The formulas are peft 0.21's: LoRA ``W + transpose(B @ A, fan_in_fan_out) * scaling``, DoRA
and IA3 as their layers' ``merge``, and TIES/DARE as ``peft.utils.merge_utils`` applied to
the dense per-tensor deltas of several LoRA adapters.
"""

from __future__ import annotations

import zlib

import torch

from .plan import Adapter, Edit, MergeError


def tensor_seed(seed: int, name: str) -> int:
    """The seed of DARE's masks for base tensor ``name``: reproducible, independent of the shard layout."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def merged_tensor(name: str, w: torch.Tensor, edits: list[Edit], *, adapters: list[Adapter], combination: str,
                  density: float, seed: int, exact: bool) -> torch.Tensor:
    """The merged float32 value of base tensor ``name``, now ``w`` (which this may change in place)."""
    deltas: list[torch.Tensor] = []
    weights: list[float] = []
    for edit in edits:
        adapter = adapters[edit.adapter]
        fif = edit.fan_in_fan_out
        if edit.kind == "replace":
            if not exact and not torch.equal(edit.tensors["value"], w):
                raise MergeError(f"{adapter.label} replaces `{name}` (modules_to_save, bias): that can only "
                                 "be merged alone, with weight 1.0 and combination linear")
            w = edit.tensors["value"].clone()
        elif edit.kind == "ia3":
            w = w * _t(edit.tensors["ia3_l"], fif)
        elif edit.kind == "bias":
            w = _bias(w, edit)
        elif edit.kind == "lora" and len(edits) == 1 and combination == "linear":
            # one LoRA alone: added in place, without a dense delta tensor
            _t(w, fif).addmm_(edit.tensors["B"], edit.tensors["A"], alpha=edit.scaling * adapter.weight)
        else:
            delta = _t(edit.tensors["B"] @ edit.tensors["A"], fif).mul_(edit.scaling)
            if edit.kind == "dora":
                w = _dora(w, delta, edit)
            else:
                deltas.append(delta)
                weights.append(adapter.weight)
    if deltas:
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        w = w.add_(combine(deltas, weights, combination, density, generator))  # w is this merge's own copy
    return w


def _bias(b: torch.Tensor, edit: Edit) -> torch.Tensor:
    """IA3 scales the bias of a non-feedforward module; lora_bias adds lora_B's bias."""
    if "ia3_l" in edit.tensors:
        return b * edit.tensors["ia3_l"].reshape(b.shape)
    return b + edit.tensors["lora_B.bias"] * edit.scaling


def _dora(w: torch.Tensor, delta: torch.Tensor, edit: Edit) -> torch.Tensor:
    """peft's ``DoraLinearVariant.merge_unsafe``; the weight norm is a constant (detached) there."""
    fif = edit.fan_in_fan_out
    norm = torch.linalg.norm(_t(w, fif) + _t(delta, fif), dim=1)
    factor = _t((edit.tensors["m"] / norm).view(-1, 1), fif)
    return factor * (w + delta)


def combine(deltas: list[torch.Tensor], weights: list[float], combination: str, density: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Combine dense deltas as ``peft.utils.merge_utils`` does.

    ``linear`` is its task_arithmetic; ``ties``, ``dare_linear`` and ``dare_ties`` keep its names.
    """
    if density < 1 and combination == "ties":
        deltas = [_keep_largest(delta, density) for delta in deltas]
    elif density < 1 and combination in ("dare_linear", "dare_ties"):
        deltas = [_keep_at_random(delta, density, generator) for delta in deltas]
    stacked = torch.stack(deltas, dim=0)
    per_delta = (-1,) + (1,) * (stacked.dim() - 1)
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype).view(per_delta)
    if combination in ("linear", "dare_linear"):
        return weighted.sum(dim=0)
    # ties, dare_ties: keep the values whose sign agrees with the sign of the (unweighted) total
    majority = stacked.sign() == torch.where(stacked.sum(dim=0) >= 0, 1, -1)
    return (weighted * majority).sum(dim=0) / torch.clamp(majority.sum(dim=0), min=1.0)


def _keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """merge_utils' ``magnitude_based_pruning``: keep the top-k |values|, k = int(density * numel)."""
    top = torch.topk(delta.abs().reshape(-1), k=int(density * delta.numel()), largest=True).indices
    mask = torch.zeros_like(delta).reshape(-1).index_fill_(0, top, 1)
    return delta * mask.reshape(delta.shape)


def _keep_at_random(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """merge_utils' ``random_pruning`` with rescale: keep each value with probability ``density``."""
    mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    return delta * mask / density


def _t(tensor: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return tensor.T if fan_in_fan_out else tensor
