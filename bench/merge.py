"""Merge benchmark: the workers' streaming `merge()` beside peft's load + `merge_and_unload()` + `save_pretrained`.

    python bench/merge.py [--repeats 3] [--check]

Builds a random-init ~85M-parameter Llama (hidden 768, intermediate 2048, 12 layers, vocab 512, fp32, saved in
~100 MB shards) and a peft LoRA adapter on it (r=16, all-linear, lora_B randomised), then runs both merges
`--repeats` times, interleaved, each in a fresh interpreter, and prints medians: wall time, peak RSS, and the max
abs difference between the two outputs' tensors. `--check` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

MIB = 1024 * 1024
SHARD = "100MB"
GOALS = {"diff": 1e-6, "time": 1.0, "rss": 0.5}


def vm(field: str) -> float:
    """A /proc/self/status memory field, in MiB."""
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024


def child(method: str, base: Path, adapter: Path, out: Path) -> None:
    """One merge in this (fresh) process; prints a JSON line: seconds, peak RSS, RSS after the imports.

    Peak RSS is VmHWM after writing 5 to clear_refs at start. Not ru_maxrss: Linux keeps the parent's high-water mark
    across fork+exec, so it would report the benchmark's own peak (it builds the model).
    """
    Path("/proc/self/clear_refs").write_text("5")
    if method == "streaming":
        from pefthub_worker.merging import merge  # imports torch, before the clock starts, as peft's side does

        imported = vm("VmRSS")
        started = time.perf_counter()
        merge(base_dir=base, adapters=[(adapter, 1.0)], output_dir=out)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        imported = vm("VmRSS")
        started = time.perf_counter()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        model.save_pretrained(out, max_shard_size=SHARD)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mib": vm("VmHWM"), "imported_mib": imported}))


def make_models(root: Path) -> tuple[Path, Path, int]:
    """The fp32 base (sharded) and an all-linear r=16 LoRA adapter with random lora_B; returns the parameter count."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root / "base", max_shard_size=SHARD)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter", parameters


def run_child(method: str, base: Path, adapter: Path, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(base), str(adapter), str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{method} merge failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result | {"process_seconds": time.perf_counter() - started}


def max_abs_diff(a: Path, b: Path) -> tuple[float, int]:
    """Largest |a - b| over every tensor of two model folders, read one tensor at a time; and the tensor count."""
    from safetensors import safe_open

    def where(folder: Path) -> dict[str, Path]:
        found = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(path, framework="pt") as fh:
                found.update(dict.fromkeys(fh.keys(), path))
        return found

    left, right = where(a), where(b)
    if left.keys() != right.keys():
        sys.exit(f"the outputs hold different tensors: {sorted(left.keys() ^ right.keys())[:5]}")
    worst = 0.0
    for name, path in left.items():
        with safe_open(path, framework="pt") as fa, safe_open(right[name], framework="pt") as fb:
            worst = max(worst, (fa.get_tensor(name).float() - fb.get_tensor(name).float()).abs().max().item())
    return worst, len(left)


def run(args: argparse.Namespace, tmp: Path) -> bool:
    started = time.perf_counter()
    base, adapter, parameters = make_models(tmp)
    shards = len(list(base.glob("*.safetensors")))
    adapter_mib = (adapter / "adapter_model.safetensors").stat().st_size / MIB
    print(f"base: {parameters / 1e6:.1f}M parameters, fp32, {shards} shards; adapter: LoRA r=16 all-linear, "
          f"{adapter_mib:.1f} MiB (built in {time.perf_counter() - started:.0f} s)")
    runs: dict[str, list[dict[str, float]]] = {"streaming": [], "peft": []}
    diff = count = None
    for i in range(args.repeats):
        for method in ("streaming", "peft") if i % 2 == 0 else ("peft", "streaming"):
            runs[method].append(run_child(method, base, adapter, tmp / f"{method}-{i}"))
        if diff is None:
            diff, count = max_abs_diff(tmp / "streaming-0", tmp / "peft-0")
        for method in runs:
            shutil.rmtree(tmp / f"{method}-{i}")

    def med(method: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[method])

    def each(method: str, key: str, fmt: str) -> str:
        return ", ".join(format(r[key], fmt) for r in runs[method])

    time_ratio = med("streaming", "seconds") / med("peft", "seconds")
    rss_ratio = med("streaming", "peak_mib") / med("peft", "peak_mib")
    ok = {"diff": diff <= GOALS["diff"], "time": time_ratio <= GOALS["time"], "rss": rss_ratio <= GOALS["rss"]}
    rows = [
        ("streaming merge(), time", f"{med('streaming', 'seconds'):.2f} s", each("streaming", "seconds", ".2f"), "", ""),
        ("peft merge_and_unload + save, time", f"{med('peft', 'seconds'):.2f} s", each("peft", "seconds", ".2f"), "", ""),
        ("time, streaming / peft", f"{time_ratio:.2f}x", "", f"<= {GOALS['time']:.2f}x", "ok" if ok["time"] else "MISSED"),
        ("streaming merge(), peak RSS", f"{med('streaming', 'peak_mib'):.0f} MiB", each("streaming", "peak_mib", ".0f"), "", ""),
        ("peft merge_and_unload + save, peak RSS", f"{med('peft', 'peak_mib'):.0f} MiB", each("peft", "peak_mib", ".0f"), "", ""),
        ("peak RSS, streaming / peft", f"{rss_ratio:.2f}x", "", f"<= {GOALS['rss']:.2f}x", "ok" if ok["rss"] else "MISSED"),
        ("max abs diff, streaming vs peft", f"{diff:.1e}", f"{count} tensors", f"<= {GOALS['diff']:.0e}", "ok" if ok["diff"] else "MISSED"),
    ]
    header = ("measurement", "median", "runs", "goal", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\nRSS right after the imports (median): streaming {med('streaming', 'imported_mib'):.0f} MiB (torch, safetensors), "
          f"peft {med('peft', 'imported_mib'):.0f} MiB (torch, transformers, peft).")
    print(f"Whole child process incl. interpreter start and imports (median): streaming {med('streaming', 'process_seconds'):.2f} s, "
          f"peft {med('peft', 'process_seconds'):.2f} s. Base in fp32: {parameters * 4 / MIB:.0f} MiB.")
    return all(ok.values())


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pefthub-bench-merge-") as tmp:
        met = run(args, Path(tmp))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
