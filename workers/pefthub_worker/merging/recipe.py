"""The merge recipe: options, base layout, adapters, plan, shards, side files, rename; read it top to bottom.

The base is never loaded as a model: each shard is rewritten in the base's layout one tensor
at a time, so peak memory stays near the largest tensor plus the adapters. Everything that
can be refused is refused before the first shard is written: bad options, a quantized or
malformed base, adapters that cannot merge or do not fit the base. The result is written to
a temporary folder beside ``output_dir`` and renamed into place only when complete, so a
failed merge leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pefthub.protocol.manifest import MODEL_CARD, MODEL_CONFIG
from pefthub.protocol.specs import COMBINATIONS, DTYPES

from . import shards
from .ops import merged_tensor
from .plan import MergeError, load_adapter, plan_edits, read_json


@dataclass
class MergeResult:
    """What :func:`merge` wrote: the folder, its parameter count and how many base tensors changed."""

    output_dir: Path
    parameters: int
    merged_modules: int
    seconds: float
    peak_rss_mib: float | None


def merge(
    *,
    base_dir: Path,
    adapters: list[tuple[Path, float]],
    output_dir: Path,
    combination: str = "linear",
    density: float = 0.5,
    dtype: str = "float32",
    seed: int = 0,
    on_event: Callable[[str, dict], None] = lambda type, data: None,
) -> MergeResult:
    """Merge ``adapters`` (folder, weight) into the safetensors model in ``base_dir``; write ``output_dir``.

    One adapter with weight 1.0 and ``linear`` reproduces peft's ``merge_and_unload()`` (LoRA,
    DoRA, IA3, ``modules_to_save``); anything else combines plain LoRA deltas (``combination``,
    ``density``; ``seed`` draws DARE's masks). ``on_event(type, data)`` hears a ``log`` and a
    ``metric`` (step, total_steps) per shard.
    """
    started = time.monotonic()
    base_dir, output_dir = Path(base_dir), Path(output_dir)

    # -- 1. options: checked before anything is read ----------------------------------------
    _check_options(adapters, combination, density, dtype)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise MergeError(f"output_dir `{output_dir}` exists and is not empty: give a new folder")

    # -- 2. the base: its layout and every shard's header; no weights read yet --------------
    shard_names, index = shards.base_layout(base_dir)
    config = _read_config(base_dir)
    base_shards = [shards.read_shard(base_dir, name) for name in shard_names]
    base = {name: tensor for shard in base_shards for name, tensor in shard.header.tensors.items()}

    # -- 3. the adapters: read whole (they are small) and checked ----------------------------
    loaded = [load_adapter(Path(path), float(weight), i) for i, (path, weight) in enumerate(adapters)]

    # -- 4. plan: the edits of each base tensor, checked against the base's names and shapes -
    exact = len(loaded) == 1 and loaded[0].weight == 1.0 and combination == "linear"
    plan = plan_edits(loaded, base, exact=exact)
    merged_modules = sum(1 for edits in plan.values() if any(edit.kind != "bias" for edit in edits))

    def merged(name: str, value: torch.Tensor) -> torch.Tensor:
        return merged_tensor(name, value, plan[name], adapters=loaded, combination=combination,
                             density=density, seed=seed, exact=exact)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        # -- 5. shards: rewritten one tensor at a time, in the base's layout -----------------
        total_size = 0
        for done, shard in enumerate(base_shards, 1):
            name = shard.path.name
            total_size += shards.write_shard(shard, staging / name, getattr(torch, dtype), plan, merged)
            edited = sum(1 for tensor in shard.header.tensors if tensor in plan)
            count = len(shard.header.tensors)
            message = f"shard {done}/{len(base_shards)} `{name}`: {count} tensors, {edited} merged"
            on_event("log", {"message": message, "level": "info"})
            on_event("metric", {"step": done, "total_steps": len(base_shards)})

        # -- 6. side files: the index, config.json in the new dtype, tokenizer and the rest ---
        if index is not None:
            index.setdefault("metadata", {})["total_size"] = total_size
            (staging / shards.INDEX).write_text(json.dumps(index, indent=2) + "\n")
        _copy_side_files(base_dir, staging, config, dtype)

        # -- 7. into place: one rename (over an empty output_dir too) ------------------------
        os.chmod(staging, 0o755)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    parameters = sum(math.prod(tensor.shape) for tensor in base.values())
    return MergeResult(output_dir=output_dir, parameters=parameters, merged_modules=merged_modules,
                       seconds=time.monotonic() - started, peak_rss_mib=_peak_rss_mib())


# --- steps ------------------------------------------------------------------------------------


def _check_options(adapters: list[tuple[Path, float]], combination: str, density: float, dtype: str) -> None:
    if not adapters:
        raise MergeError("adapters: give at least one (folder, weight)")
    if combination not in COMBINATIONS:
        raise MergeError(f"combination `{combination}` is unknown: use one of {', '.join(COMBINATIONS)}")
    if dtype not in DTYPES:
        raise MergeError(f"dtype `{dtype}` is unknown: use one of {', '.join(DTYPES)}")
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density {density} must be in (0, 1]: the fraction of each delta kept")
    for path, weight in adapters:
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise MergeError(f"adapter `{path}`: weight {weight!r} is not finite")


def _read_config(base_dir: Path) -> dict[str, Any]:
    """The base's config.json ({} without one); a quantized base is refused."""
    path = base_dir / MODEL_CONFIG
    config = read_json(path, f"base `{base_dir}`") if path.is_file() else {}
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise MergeError(f"base `{base_dir}` is quantized ({method}): merge into the "
                         "float16/bfloat16/float32 base the adapter was trained from, not a 4-bit one")
    return config


def _copy_side_files(base_dir: Path, out: Path, config: dict[str, Any], dtype: str) -> None:
    """config.json with the new dtype; generation config, tokenizer and other small files as they are."""
    if config:
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
        (out / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for path in base_dir.iterdir():
        weights = path.suffix in (".safetensors", ".bin", ".pt", ".pth") or path.name.endswith(".index.json")
        skipped = path.name in (MODEL_CONFIG, MODEL_CARD) or path.name.startswith(".")
        if path.is_file() and not weights and not skipped:
            shutil.copy2(path, out / path.name)


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM), where /proc has it."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE)
    return int(found[1]) / 1024 if found else None
