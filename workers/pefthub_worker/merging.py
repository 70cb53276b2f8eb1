"""Merge adapters into a base model, streaming tensor by tensor over its safetensors shards.

The base is never loaded as a model: each shard is rewritten in the base's layout one tensor at a time (read, merge
in float32, cast, append), so peak memory stays near the largest tensor plus the adapters. The formulas are peft
0.21's: LoRA ``W + transpose(B @ A, fan_in_fan_out) * scaling``, DoRA and IA3 as their layers' ``merge``, and
TIES/DARE as ``peft.utils.merge_utils`` applied to the dense per-tensor deltas of several LoRA adapters.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: a worker starts without it
    import torch

COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties")
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_PROMPT_TYPES = {"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "ADAPTION_PROMPT", "MULTITASK_PROMPT_TUNING", "CPT"}
# LoRA options whose adapters are not "W + ΔW": their merge needs code this module does not have.
_UNSUPPORTED_LORA = ("use_qalora", "layer_replication", "target_parameters", "trainable_token_indices", "megatron_config",
                     "alora_invocation_tokens", "use_bdlora", "arrow_config", "velora_config", "monteclora_config", "kasa_config")
_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")  # initialisations that change the base weights
_PART = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B|"
                   r"lora_magnitude_vector|ia3_l)$")
_PEFT_PREFIX = "base_model.model."
_INTEGER = ("BOOL", "I16", "U16", "I32", "U32", "I64", "U64")
_FLOATS = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}


class MergeError(ValueError):
    """A merge that cannot be done; the message names the adapter, module or field and says what to do."""


@dataclass
class MergeResult:
    """What :func:`merge` wrote: the folder, its parameter count and how many base tensors changed."""
    output_dir: Path
    parameters: int
    merged_modules: int
    seconds: float
    peak_rss_mib: float | None


@dataclass
class _Edit:
    """One adapter's change to one base tensor: ``lora``/``dora``/``ia3`` on a weight, ``bias`` or ``replace``."""
    kind: str
    adapter: int
    tensors: dict[str, torch.Tensor]
    scaling: float = 1.0
    fan_in_fan_out: bool = False


@dataclass
class _Shard:
    path: Path
    data_start: int
    metadata: dict[str, str] | None
    entries: dict[str, dict[str, Any]]


@dataclass
class _Adapter:
    path: Path
    weight: float
    config: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)


def tensor_seed(seed: int, name: str) -> int:
    """The seed of DARE's random masks for base tensor ``name``: reproducible and independent of the shard layout."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def merge(
    *, base_dir: Path, adapters: list[tuple[Path, float]], output_dir: Path, combination: str = "linear",
    density: float = 0.5, dtype: str = "float32", seed: int = 0,
    on_event: Callable[[str, dict], None] = lambda t, d: None,
) -> MergeResult:
    """Merge ``adapters`` (folder, weight) into the safetensors model in ``base_dir``; write ``output_dir``.

    One adapter with weight 1.0 and ``linear`` reproduces peft's ``merge_and_unload()`` (LoRA, DoRA, IA3, ``modules_to_save``);
    anything else combines plain LoRA deltas. Written to a temporary sibling folder, renamed to ``output_dir`` when complete.
    """
    started = time.monotonic()
    base_dir, output_dir = Path(base_dir), Path(output_dir)
    _check_options(adapters, combination, density, dtype)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise MergeError(f"output_dir `{output_dir}` exists and is not empty: give a new folder")
    shards, index = _base_layout(base_dir)
    config = json.loads((base_dir / "config.json").read_text()) if (base_dir / "config.json").is_file() else {}
    if config.get("quantization_config"):
        raise MergeError(f"base `{base_dir}` is quantized ({config['quantization_config'].get('quant_method', '?')}): "
                         "merge into the float16/bfloat16/float32 base the adapter was trained from, not a 4-bit one")
    headers = [_read_header(base_dir, shard) for shard in shards]
    tensors = {name: entry for header in headers for name, entry in header.entries.items()}
    loaded = [_load_adapter(Path(path), float(weight), i) for i, (path, weight) in enumerate(adapters)]
    exact = len(loaded) == 1 and loaded[0].weight == 1.0 and combination == "linear"
    plan = _plan(loaded, tensors, exact=exact)
    merged_modules = sum(1 for edits in plan.values() if any(edit.kind != "bias" for edit in edits))
    merged = functools.partial(_apply, adapters=loaded, combination=combination, density=density, seed=seed, exact=exact)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        total_size = 0
        for done, header in enumerate(headers, 1):
            shard, entries = header.path.name, header.entries
            edited = [name for name in entries if name in plan]
            if not edited and all(entry["dtype"] in (DTYPES[dtype], *_INTEGER) for entry in entries.values()):
                shutil.copyfile(header.path, tmp / shard)  # nothing to change: the bytes as they are
                total_size += header.path.stat().st_size - header.data_start
            else:
                total_size += _write_shard(header, tmp / shard, plan, merged, DTYPES[dtype])
            on_event("log", {"message": f"shard {done}/{len(shards)} `{shard}`: {len(entries)} tensors, "
                                        f"{len(edited)} merged", "level": "info"})
            on_event("metric", {"step": done, "total_steps": len(shards)})
        if index is not None:
            index.setdefault("metadata", {})["total_size"] = total_size
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        _copy_side_files(base_dir, tmp, config, dtype)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output_dir)  # over an empty output_dir too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(output_dir=output_dir, parameters=sum(math.prod(e["shape"]) for e in tensors.values()),
                       merged_modules=merged_modules, seconds=time.monotonic() - started, peak_rss_mib=_peak_rss_mib())


def _write_shard(src: _Shard, dst: Path, plan: dict[str, list[_Edit]], merged: Callable[..., torch.Tensor], target: str) -> int:
    """Write one shard tensor by tensor (read, merge in float32, cast, append); returns its data bytes.

    Not ``safe_open`` + ``save_file``: they would hold the whole shard twice (its mapped pages and the merged copy).
    """
    import torch

    names = sorted(src.entries, key=lambda n: src.entries[n]["data_offsets"][0])
    out: dict[str, Any] = {"__metadata__": src.metadata or {"format": "pt"}}
    offset = 0
    for name in names:
        entry, cast = src.entries[name], src.entries[name]["dtype"] in _FLOATS
        size = math.prod(entry["shape"]) * _FLOATS[target][1] if cast else entry["data_offsets"][1] - entry["data_offsets"][0]
        out[name] = {"dtype": target if cast else entry["dtype"], "shape": entry["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(out, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
    with src.path.open("rb") as fin, dst.open("wb") as fout:
        fout.write(struct.pack("<Q", len(blob)) + blob)
        for name in names:
            begin, end = (entry := src.entries[name])["data_offsets"]
            fin.seek(src.data_start + begin)
            if name not in plan and entry["dtype"] in (target, *_INTEGER):
                fout.write(fin.read(end - begin))
                continue
            tensor = torch.empty(entry["shape"], dtype=getattr(torch, _FLOATS[entry["dtype"]][0]))
            if fin.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - begin:
                raise MergeError(f"base shard `{src.path}` is truncated at tensor `{name}`")
            if name in plan:
                tensor = merged(name, tensor.float(), plan[name])
            fout.write(tensor.to(getattr(torch, _FLOATS[target][0])).contiguous().reshape(-1).view(torch.uint8).numpy())
    return offset


def _check_options(adapters: list[tuple[Path, float]], combination: str, density: float, dtype: str) -> None:
    for bad, message in [
        (not adapters, "adapters: give at least one (folder, weight)"),
        (combination not in COMBINATIONS, f"combination `{combination}` is unknown: use one of {', '.join(COMBINATIONS)}"),
        (dtype not in DTYPES, f"dtype `{dtype}` is unknown: use one of {', '.join(DTYPES)}"),
        (not 0.0 < density <= 1.0, f"density {density} must be in (0, 1]: the fraction of each delta kept"),
        *((not isinstance(w, (int, float)) or not math.isfinite(w), f"adapter `{p}`: weight {w!r} is not finite") for p, w in adapters),
    ]:
        if bad:
            raise MergeError(message)


def _base_layout(base_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The base's shard file names in order and its index (None for a single ``model.safetensors``)."""
    if (base_dir / "model.safetensors.index.json").is_file():
        index = json.loads((base_dir / "model.safetensors.index.json").read_text())
        return sorted(set(index["weight_map"].values())), index
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"], None
    found = ", ".join(sorted(p.name for p in base_dir.iterdir())) if base_dir.is_dir() else "no such folder"
    raise MergeError(f"base `{base_dir}` has no model.safetensors or model.safetensors.index.json ({found}); "
                     "re-save it with save_pretrained(safe_serialization=True)")


def _read_header(base_dir: Path, shard: str) -> _Shard:
    """A shard's safetensors header: tensor name -> {dtype, shape, data_offsets}, and its metadata."""
    with (base_dir / shard).open("rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        entries = json.loads(fh.read(size))
    metadata = entries.pop("__metadata__", None)
    for name, entry in entries.items():
        if entry["dtype"] not in (*_FLOATS, *_INTEGER):  # U8/I8 packed 4/8-bit, F8, F4 ...
            raise MergeError(f"base `{base_dir}` holds quantized weights (`{name}` is {entry['dtype']}): merge into the "
                             "float16/bfloat16/float32 base the adapter was trained from, not a 4-bit one")
    return _Shard(base_dir / shard, 8 + size, metadata, entries)


def _load_adapter(path: Path, weight: float, position: int) -> _Adapter:
    """Read one adapter folder (config + tensors, as float32) and refuse what cannot be merged."""
    import torch
    from safetensors.torch import load_file

    label = f"adapter {position + 1} `{path}`"
    if not (path / "adapter_config.json").is_file():
        raise MergeError(f"{label} has no adapter_config.json: is it a peft adapter folder?")
    config = json.loads((path / "adapter_config.json").read_text())
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type in _PROMPT_TYPES:
        raise MergeError(f"{label} is {peft_type.lower().replace('_', ' ')}: it adds virtual tokens, not weight changes, "
                         "and cannot be merged; serve it with the base and peft instead")
    if peft_type not in ("LORA", "IA3"):
        raise MergeError(f"{label} has peft_type `{peft_type}`: the merger handles LoRA, DoRA and IA3")
    init = str(config.get("init_lora_weights", True)).lower()
    bad = [key for key in _UNSUPPORTED_LORA if config.get(key)] + ([f"init_lora_weights={init}"] if init.startswith(_INITS) else [])
    if bad:
        raise MergeError(f"{label} uses {', '.join(bad)}: such adapters cannot be merged here")
    if not (path / "adapter_model.safetensors").is_file():
        raise MergeError(f"{label} has no adapter_model.safetensors (pickled .bin adapters are not read)")
    adapter = _Adapter(path=path, weight=weight, config=config)
    for saved, tensor in load_file(path / "adapter_model.safetensors").items():
        key = saved.removeprefix(_PEFT_PREFIX)
        match = _PART.match(key)
        if not torch.isfinite(tensor).all():
            raise MergeError(f"{label}: tensor `{key}` holds NaN or inf; the adapter is broken")
        if match:
            adapter.modules.setdefault(match["module"], {})[match["part"]] = tensor.float()
        elif re.search(r"(^|\.)(lora_|ia3_|trainable_tokens|vera_|hada_|lokr_)", key):
            raise MergeError(f"{label}: tensor `{key}` is an adapter part the merger does not know")
        else:  # modules_to_save, saved embedding layers, bias="all": whole tensors that replace the base's
            adapter.replacements[key.replace(".base_layer.", ".")] = tensor.float()
    if not adapter.modules and not adapter.replacements:
        raise MergeError(f"{label} has no tensors")
    return adapter


def _plan(adapters: list[_Adapter], headers: dict[str, dict[str, Any]], *, exact: bool) -> dict[str, list[_Edit]]:
    """base tensor name -> the edits to apply to it, checked against the base's names and shapes."""
    plan: dict[str, list[_Edit]] = {}
    for i, adapter in enumerate(adapters):
        label = f"adapter {i + 1} `{adapter.path}`"
        for key, tensor in adapter.replacements.items():
            name = _base_name(key, headers, label)
            if list(tensor.shape) != headers[name]["shape"]:
                raise MergeError(f"{label} replaces `{name}` with shape {list(tensor.shape)} but the base's is "
                                 f"{headers[name]['shape']} (a resized vocabulary cannot be merged)")
            plan.setdefault(name, []).append(_Edit("replace", i, {"value": tensor}))
        for module, parts in adapter.modules.items():
            name = _base_name(f"{module}.weight", headers, label)
            plan.setdefault(name, []).append(_module_edit(adapter, i, module, parts, headers[name]["shape"], label, exact))
            if "lora_B.bias" in parts or ("ia3_l" in parts and parts["ia3_l"].shape[0] != 1):
                bias = name.removesuffix(".weight") + ".bias"
                if bias in headers:
                    plan.setdefault(bias, []).append(_Edit("bias", i, parts, plan[name][-1].scaling))
                elif "lora_B.bias" in parts:
                    raise MergeError(f"{label} has lora_bias on `{module}` but the base has no `{bias}`")
    return plan


def _module_edit(adapter: _Adapter, i: int, module: str, parts: dict[str, torch.Tensor], shape: list[int], label: str,
                 exact: bool) -> _Edit:
    config, where, config_fif = adapter.config, f"{label}, module `{module}`", bool(adapter.config.get("fan_in_fan_out"))
    if "ia3_l" in parts:  # peft's shapes: (1, in) on feedforward modules (scales inputs), else (out, 1)
        if not exact:
            raise MergeError(f"{label} is IA3: it can only be merged alone, with weight 1.0 and combination linear")
        n, feedforward = parts["ia3_l"].numel(), parts["ia3_l"].shape[0] == 1
        fif = _orientation(shape, None if feedforward else n, n if feedforward else None, config_fif, where)
        return _Edit("ia3", i, parts, 1.0, fif)
    a, b = parts.get("lora_A.weight", parts.get("lora_embedding_A")), parts.get("lora_B.weight", parts.get("lora_embedding_B"))
    embedding = "lora_embedding_A" in parts
    if a is None or b is None or a.dim() != 2 or b.dim() != 2:
        raise MergeError(f"{where}: needs 2-D lora_A and lora_B (found {sorted(parts)}); convolution LoRA is not merged here")
    r = _pattern(config.get("rank_pattern") or {}, module, config.get("r", a.shape[0]))
    if r != a.shape[0]:
        raise MergeError(f"{where}: rank {r} from the config (r/rank_pattern) but lora_A has {a.shape[0]} rows")
    alpha = _pattern(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    fif = _orientation(shape, b.shape[0], a.shape[1], config_fif or embedding, where)  # an embedding is (in, out)
    tensors = {"A": a, "B": b} | ({"m": parts["lora_magnitude_vector"]} if "lora_magnitude_vector" in parts else {})
    if not exact and ("m" in tensors or "lora_B.bias" in parts):
        feature = "DoRA" if "m" in tensors else "lora_bias"
        raise MergeError(f"{where} uses {feature}: it can only be merged alone, with weight 1.0 and combination linear")
    return _Edit("dora" if "m" in tensors else "lora", i, tensors, scaling, fif)


def _orientation(shape: list[int], out_f: int | None, in_f: int | None, config_fif: bool, where: str) -> bool:
    """Whether the base stores this weight (in, out) like GPT-2's Conv1D; the config decides only square ones."""
    fits = [fif for fif in (False, True) if len(shape) == 2
            and all(want in (None, have) for have, want in zip(shape, (in_f, out_f) if fif else (out_f, in_f)))]
    if not fits:
        raise MergeError(f"{where}: adapter shapes (out {out_f}, in {in_f}) do not fit the base tensor {shape}")
    return config_fif if len(fits) == 2 else fits[0]


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first key matching the end of the module name."""
    return next((value for key, value in patterns.items() if re.match(rf"(.*\.)?({key})$", module)), default)


def _base_name(key: str, headers: dict[str, Any], label: str) -> str:
    """The base tensor ``key`` refers to, whether or not the base was saved with a leading ``model.``."""
    for name in (key, key.removeprefix("model."), f"model.{key}"):
        if name in headers:
            return name
    raise MergeError(f"{label} changes `{key.rsplit('.', 1)[0]}` but the base has no tensor `{key}`: was it trained on another base?")


def _apply(name: str, w: torch.Tensor, edits: list[_Edit], *, adapters: list[_Adapter], combination: str, density: float,
           seed: int, exact: bool) -> torch.Tensor:
    """The merged float32 value of base tensor ``name``."""
    import torch

    deltas, weights = [], []
    for edit in edits:
        if edit.kind == "replace":
            if not exact and not torch.equal(edit.tensors["value"], w):
                raise MergeError(f"adapter {edit.adapter + 1} `{adapters[edit.adapter].path}` replaces `{name}` "
                                 "(modules_to_save, bias): that can only be merged alone, with weight 1.0 and combination linear")
            w = edit.tensors["value"].clone()
        elif edit.kind == "ia3":
            w = w * _t(edit.tensors["ia3_l"], edit.fan_in_fan_out)
        elif edit.kind == "bias":  # IA3 scales the bias of a non-feedforward module; lora_bias adds lora_B's
            w = w * edit.tensors["ia3_l"].reshape(w.shape) if "ia3_l" in edit.tensors else w + edit.tensors["lora_B.bias"] * edit.scaling
        elif edit.kind == "lora" and len(edits) == 1 and combination == "linear":  # in one pass, without a delta tensor
            _t(w, edit.fan_in_fan_out).addmm_(edit.tensors["B"], edit.tensors["A"], alpha=edit.scaling * adapters[edit.adapter].weight)
        else:
            delta = _t(edit.tensors["B"] @ edit.tensors["A"], edit.fan_in_fan_out).mul_(edit.scaling)
            if edit.kind == "dora":  # peft's DoraLinearVariant.merge_unsafe; the norm is a constant (detached)
                norm = torch.linalg.norm(_t(w, edit.fan_in_fan_out) + 1 * _t(delta, edit.fan_in_fan_out), dim=1)
                factor = _t((edit.tensors["m"] / norm).view(-1, 1), edit.fan_in_fan_out)
                w = factor * (w + delta)
            else:
                deltas.append(delta)
                weights.append(adapters[edit.adapter].weight)
    if deltas:
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        w = w.add_(combine(deltas, weights, combination, density, generator))  # w is this merge's own copy
    return w


def combine(deltas: list[torch.Tensor], weights: list[float], combination: str, density: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Combine dense deltas as ``peft.utils.merge_utils`` does (task_arithmetic, ties, dare_linear, dare_ties)."""
    import torch

    if combination in ("ties", "dare_linear", "dare_ties") and density < 1:
        if combination == "ties":  # magnitude_based_pruning: keep the top-k |values|, k = int(density * numel)
            masks = [torch.zeros_like(d).reshape(-1).index_fill_(0, torch.topk(d.abs().reshape(-1), k=int(density * d.numel()),
                                                                                largest=True)[1], 1) for d in deltas]
            deltas = [delta * mask.reshape(delta.shape) for delta, mask in zip(deltas, masks)]
        else:  # random_pruning with rescale
            deltas = [delta * torch.bernoulli(torch.full_like(delta, density), generator=generator) / density
                      for delta in deltas]
    stacked = torch.stack(deltas, dim=0)
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype).view((-1,) + (1,) * (stacked.dim() - 1))
    if combination in ("linear", "dare_linear"):
        return weighted.sum(dim=0)
    majority = stacked.sign() == torch.where(stacked.sum(dim=0) >= 0, 1, -1)  # sign elected by total, unweighted
    return (weighted * majority).sum(dim=0) / torch.clamp(majority.sum(dim=0), min=1.0)


def _t(tensor: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return tensor.T if fan_in_fan_out else tensor


def _copy_side_files(base_dir: Path, out: Path, config: dict[str, Any], dtype: str) -> None:
    """config.json with the new dtype; generation config, tokenizer and other small files as they are."""
    if config:
        config.update({"dtype": dtype} | ({"torch_dtype": dtype} if "torch_dtype" in config else {}))
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in base_dir.iterdir():
        weights = path.suffix in (".safetensors", ".bin", ".pt", ".pth") or path.name.endswith(".index.json")
        if path.is_file() and not weights and path.name not in ("config.json", "README.md") and not path.name.startswith("."):
            shutil.copy2(path, out / path.name)


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM), where /proc has it."""
    status = Path("/proc/self/status")
    found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE) if status.exists() else None
    return int(found[1]) / 1024 if found else None
