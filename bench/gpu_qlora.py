"""QLoRA on a random-init Llama of 7B shape through the workers' own recipe: peak GPU memory and tokens/s.

For a machine with a CUDA GPU (nothing is downloaded): builds the model on the GPU in
bf16, saves it as safetensors (~13.5 GB on local disk), then runs
`pefthub_worker.training.train(method=...)` for a few steps at `--seq` tokens per row
and prints a table: peak memory allocated, useful (non-padding) tokens/s (median optimizer
step), loss. The text rows vary in length (lognormal, up to `--seq` tokens) and are packed
into sequences of `--seq` tokens (the recipe's default; `--no-packing` pads each batch to its
longest row instead). Compares `qlora` with `lora` in bf16 side by side when `--compare-lora`
is given.

    python bench/gpu_qlora.py                    # 7B shape, seq 512, 10 steps, packed (on a GPU)
    python bench/gpu_qlora.py --tiny             # a smoke run of the same code on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000}
SHAPE_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": 512}


def build_base(folder: Path, shape: dict, seq: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from examples.tiny import make_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = LlamaConfig(**shape, max_position_embeddings=max(seq, 512), tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_default_dtype(dtype)  # build in bf16 on the GPU: 13.5 GB, not 27 GB of fp32 first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    make_tokenizer(min(shape["vocab_size"], 512)).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def make_data(path: Path, rows: int, seq: int) -> None:
    """Text rows of lognormal length (median seq / 6 words, at most seq), as instruction data varies."""
    words = ["the", "hub", "trains", "merges", "pulls", "pushes", "checks", "serves", "small", "weights", "a", "new", "version", "tokens"]
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(rows):
            n = min(seq, max(8, round(rng.lognormvariate(math.log(seq / 6), 0.9))))
            fh.write(json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(n))}) + "\n")


def run(method: str, base: Path, data: Path, work: Path, *, seq: int, steps: int, batch: int, packing: bool) -> dict:
    import torch

    from pefthub.protocol.specs import TrainHyperparameters
    from pefthub_worker.training import Callbacks, train

    step_rates: list[float] = []

    def on_event(kind: str, payload: dict) -> None:
        if kind == "metric" and "tokens_per_second" in payload:
            step_rates.append(payload["tokens_per_second"])

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    hp = TrainHyperparameters.from_dict({"r": 16, "max_steps": steps, "batch_size": batch, "max_seq_length": seq,
                                         "learning_rate": 2e-4, "gradient_checkpointing": True, "packing": packing},
                                        method=method)
    started = time.perf_counter()
    result = train(method=method, hyperparameters=hp, base_dir=base, dataset_path=data, output_dir=work / method,
                   callbacks=Callbacks(on_event=on_event))
    rates = sorted(step_rates[1:] or step_rates)  # the first step pays for kernel warm-up
    return {
        "method": method, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "tok_s": rates[len(rates) // 2] if rates else None, "loss": (result.metrics["first_loss"], result.metrics["final_loss"]),
        "seconds": time.perf_counter() - started, "quantization": result.quantization,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape (a CPU smoke run of this script)")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compare-lora", action="store_true", help="also run plain LoRA on the bf16 base")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                        help="pack rows into sequences of --seq tokens (default), or pad each batch (--no-packing)")
    parser.add_argument("--workdir", default=None, help="where the ~13.5 GB checkpoint goes (default: a temp dir)")
    args = parser.parse_args()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --tiny for a CPU smoke run")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pefthub-gpu-bench-"))
    try:
        shape = SHAPE_TINY if args.tiny else SHAPE_7B
        t0 = time.perf_counter()
        build_base(work / "base", shape, args.seq)
        print(f"built and saved a random-init Llama {shape} in {time.perf_counter() - t0:.1f} s", flush=True)
        make_data(work / "train.jsonl", rows=max(64, args.steps * args.batch * 12), seq=args.seq)
        methods = ["qlora", *(["lora"] if args.compare_lora else [])]
        rows = [run(m, work / "base", work / "train.jsonl", work, seq=args.seq, steps=args.steps, batch=args.batch,
                    packing=args.packing) for m in methods]
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        layout = f"batch {args.batch} packed sequences" if args.packing else f"batch {args.batch} rows, padded"
        print(f"\n{device}; seq {args.seq}, {layout}, {args.steps} steps, r=16, gradient checkpointing")
        print(f"{'method':8} {'peak GPU GiB':>12} {'tokens/s':>10} {'loss first -> last':>20} {'run s':>7}")
        for r in rows:
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            tok = f"{r['tok_s']:.0f}" if r["tok_s"] else "-"
            print(f"{r['method']:8} {peak:>12} {tok:>10} {r['loss'][0]:>9.3f} -> {r['loss'][1]:<8.3f} {r['seconds']:>7.1f}")
        print(f"quantization: {rows[0]['quantization']}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
