"""Training benchmark: a packed LoRA run as a hub job beside a plain loop and a default `transformers.Trainer` script.

    python bench/training.py [--repeats 3] [--rows 300] [--torch-threads N] [--check]

Starts `pefthub-server up --no-worker` (SQLite, Redis db 14, flushed) and one `pefthub-worker`, pushes a random-init
Llama (hidden 256, 4 layers) and a prompt/completion dataset whose row lengths are long-tailed like instruction data
(16-512 tokens, lognormal), runs one job on the fresh worker, then one epoch of the same LoRA training `--repeats`
times each of three ways, interleaved: `hub.train(...).wait()` (packing on, the default); this file's `--plain` mode
(the same packed micro-batches in a hand-written transformers + peft loop); and its `--trainer` mode (what a default
script does: `transformers.Trainer` + peft, `DataCollatorForSeq2Seq` padding each batch to its longest row). Prints
medians of useful (non-padding) tokens per second; `--check` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT, BIN = Path(__file__).resolve().parents[1], Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import REDIS_URL, answers, epoch, free_port, start  # noqa: E402  (shared process helpers)
from bench.transfer import run_cleanly  # noqa: E402

HP = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
      "learning_rate": 1e-3, "batch_size": 2, "max_seq_length": 512, "seed": 0, "epochs": 1}
#: rows per batch of the Trainer script: about the useful tokens of a packed micro-batch (2 x 512) at the mean row length
TRAINER_BATCH = 8
# the worker's log line: "[2026-11-29 10:00:00,123: INFO/MainProcess] [job <id>] training lora on ..." (local time)
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] \[job ([\w-]+)\] (training|pushing) ", re.M)


def _examples(base: Path, dataset: Path) -> tuple[Any, list]:
    """The recipe's own reading and tokenisation (loss on the completion and EOS only), so every way sees the same rows."""
    from transformers import AutoTokenizer

    from pefthub_worker.training import data

    tok = AutoTokenizer.from_pretrained(base)
    rows, fmt = data.read_jsonl(dataset)
    return tok, data.tokenize(rows, fmt, tok, max_seq_length=HP["max_seq_length"], name=dataset.name)[0]


def _lora_model(base: Path) -> Any:
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    random.seed(HP["seed"])
    torch.manual_seed(HP["seed"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = False
    torch.manual_seed(HP["seed"])
    return get_peft_model(model, LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=HP["lora_dropout"],
                                            target_modules=HP["target_modules"], bias="none", task_type="CAUSAL_LM"))


def plain(base: Path, dataset: Path, out: Path, threads: int) -> dict:
    """The recipe's packed training, written out as a plain loop over the same micro-batches; seconds per phase, tokens, losses."""
    t = [time.perf_counter()]
    import torch

    from pefthub_worker.training import data

    torch.set_num_threads(threads)  # what the worker sets per job (`--torch-threads`, default cores / concurrency)
    t.append(time.perf_counter())
    tok, examples = _examples(base, dataset)
    t.append(time.perf_counter())
    model = _lora_model(base)
    t.append(time.perf_counter())
    seq, bs = HP["max_seq_length"], HP["batch_size"]
    steps = data.batches_per_epoch(examples, bs, pack_length=seq)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HP["learning_rate"], weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    stream, tokens, losses, per_step = data.micro_batches(examples, bs, HP["seed"], pack_length=seq), 0, [], []
    model.train()
    t.append(last := time.perf_counter())
    for _ in range(steps):
        _, sequences = next(stream)
        batch = data.collate(sequences, tok.pad_token_id, packed=True)
        (loss := model(**batch).loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += (n := sum(len(e.input_ids) for s in sequences for e in s))  # useful tokens, as the recipe counts
        per_step.append(n / ((now := time.perf_counter()) - last))  # as the recipe's metric events at logging_steps=1
        last = now
    t.append(time.perf_counter())
    model.save_pretrained(out)
    t.append(time.perf_counter())
    phases = dict(zip(("imports", "tokenise", "load + wrap", "optimizer", "loop", "save"), (b - a for a, b in itertools.pairwise(t))))
    lengths = sorted(len(e.input_ids) for e in examples)
    shape = {"min": lengths[0], "median": lengths[len(lengths) // 2], "p90": lengths[len(lengths) * 9 // 10],
             "max": lengths[-1]}
    return {**phases, "tokens": tokens, "steps": steps, "step": statistics.median(per_step), "first_loss": losses[0],
            "final_loss": losses[-1], "row tokens": shape}


def trainer(base: Path, dataset: Path, out: Path, threads: int) -> dict:
    """What a default script does: `Trainer` + peft, batches padded to their longest row, `group_by_length` off."""
    t0 = time.perf_counter()
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    torch.set_num_threads(threads)
    tok, examples = _examples(base, dataset)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    model = _lora_model(base)
    collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    padded = [0]

    def collate(features: list[dict]) -> dict:
        batch = collator(features)
        padded[0] += batch["input_ids"].numel()
        return batch

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=TRAINER_BATCH, num_train_epochs=HP["epochs"],
                             learning_rate=HP["learning_rate"], lr_scheduler_type="linear", weight_decay=0.0,
                             max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             seed=HP["seed"], dataloader_num_workers=0, disable_tqdm=True)
    run = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    setup = time.perf_counter() - t0
    started = time.perf_counter()
    run.train()
    loop = time.perf_counter() - started
    losses = [h["loss"] for h in run.state.log_history if "loss" in h]
    tokens = sum(len(e.input_ids) for e in examples)
    return {"setup": setup, "loop": loop, "tokens": tokens, "padded tokens": padded[0], "steps": run.state.global_step,
            "first_loss": losses[0], "final_loss": losses[-1]}


def start_hub(tmp: Path, procs: list[subprocess.Popen], threads: int) -> tuple[str, str, Path]:
    """`pefthub-server up --no-worker` on Redis and one `pefthub-worker`; returns the URL, a user token, the worker log."""
    url, log = f"http://127.0.0.1:{free_port()}", tmp / "worker.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PEFTHUB_STORAGE", "DJANGO_SETTINGS_MODULE")}
    env.update(PEFTHUB_DATA_DIR=str(tmp / "hub-data"), PEFTHUB_DISABLE_PROGRESS_BARS="1", CELERY_BROKER_URL=REDIS_URL, TMPDIR=str(tmp))
    procs.append(start([str(BIN / "pefthub-server"), "up", "--no-worker", "--port", url.rsplit(":", 1)[1]], env,
                       tmp / "hub.log", lambda: answers(f"{url}/api/v1/")))
    def adduser(*args: str) -> str:
        return subprocess.run([str(BIN / "pefthub-server"), "adduser", *args], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    worker_env = {**env, "PEFTHUB_URL": url, "PEFTHUB_TOKEN": adduser("w", "--scope", "worker"),
                  "PEFTHUB_CACHE": str(tmp / "worker-cache")}
    procs.append(start([str(BIN / "pefthub-worker"), "-Q", "gpu,cpu", "--hostname", "bench@local", "--torch-threads",
                        str(threads)], worker_env, log, lambda: " ready." in log.read_text(errors="replace")))
    return url, adduser("bench", "--team", "acme", "--role", "admin"), log


def make_inputs(root: Path, rows: int) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from examples import tiny

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base = root / "base"
    LlamaForCausalLM(config).save_pretrained(base, safe_serialization=True)
    tokenizer = tiny.make_tokenizer(512)
    tokenizer.save_pretrained(base)
    return base, make_dataset(root / "train.jsonl", rows, tokenizer)


def make_dataset(path: Path, rows: int, tokenizer: Any, seed: int = 0) -> Path:
    """Prompt/completion rows of lognormal length (median 80 tokens, 16-512, long-tailed, as instruction data is).

    Each row is built from whole generated sentences until it reaches its drawn length; the prompt takes 20-70% of it.
    """
    import random

    from examples import tiny

    rng = random.Random(seed)
    sentences = tiny.corpus(4000, seed)
    sizes = [len(tokenizer(" " + s, add_special_tokens=False)["input_ids"]) for s in sentences]
    with path.open("w") as fh:
        for _ in range(rows):
            target = min(500, max(16, round(rng.lognormvariate(4.38, 0.9))))  # e^4.38 = 80; leave room for BOS and EOS
            prompt_target, parts, size = target * rng.uniform(0.2, 0.7), [[], []], 0
            while size < target - 2:
                i = rng.randrange(len(sentences))
                parts[size >= prompt_target].append(sentences[i])
                size += sizes[i]
            fh.write(json.dumps({"prompt": " ".join(parts[0]), "completion": " " + " ".join(parts[1] or ["done."])}) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def hub_run(hub, worker_log: Path, server_pid: int) -> dict:
    cpu0, t0 = cpu_seconds(server_pid), time.time()
    job = hub.train(base_model="acme/bench-base", dataset="acme/bench-data", output="acme/bench-lora", method="lora",
                    **HP).wait(timeout=900)  # polls once a second, as a user's script would
    seen, server_cpu = time.time(), cpu_seconds(server_pid) - cpu0
    metrics = job.result.metadata["metrics"]
    per_step = [e.data["tokens_per_second"] for e in job.events() if e.type == "metric" and "tokens_per_second" in e.data]
    marks = {what: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # naive = local time, as Celery logs
             for stamp, job_id, what in LOG_LINE.findall(worker_log.read_text(errors="replace")) if job_id == job.id}
    started, finished, train_s = epoch(job.started_at), epoch(job.finished_at), metrics["train_seconds"]
    return {"tokens/s": metrics["train_tokens"] / train_s, "step": statistics.median(per_step),
            "overhead": finished - started - train_s, "e2e": finished - t0, "tokens": metrics["train_tokens"],
            "steps": metrics["steps"], "metric events": len(per_step), "server cpu": server_cpu / (seen - t0),
            "first_loss": metrics["first_loss"], "final_loss": metrics["final_loss"],
            "parts": {"submit -> claimed": started - t0, "claim + pull inputs": marks["training"] - started,
                      "recipe outside the loop": marks["pushing"] - marks["training"] - train_s,
                      "push + complete": finished - marks["pushing"], "until wait() saw it": seen - finished}}


def script_run(mode: str, base: Path, dataset: Path, out: Path, threads: int) -> dict:
    """This file's ``--plain`` or ``--trainer`` mode in a fresh interpreter."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, f"--{mode}", str(base), str(dataset), str(out),
                           "--torch-threads", str(threads)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"--{mode} failed:\n{proc.stderr[-4000:]}")
    e2e, r = time.perf_counter() - t0, json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    if mode == "trainer":
        return {"tokens/s": r["tokens"] / r["loop"], "e2e": e2e, "overhead": r["setup"],
                **{k: r[k] for k in ("tokens", "padded tokens", "steps", "first_loss", "final_loss")}}
    outside = {k: r[k] for k in ("tokenise", "load + wrap", "optimizer", "save")}  # what the recipe also does
    return {"tokens/s": r["tokens"] / r["loop"], "overhead": sum(outside.values()), "e2e": e2e,
            **{k: r[k] for k in ("step", "tokens", "steps", "first_loss", "final_loss", "row tokens")},
            "parts": {"interpreter + imports": e2e - r["loop"] - sum(outside.values()), **outside}}


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> bool:
    import redis

    from pefthub import Hub

    redis.Redis.from_url(REDIS_URL).flushdb()
    print("building the base model and dataset, starting the hub and a worker, a first job on it ...", flush=True)
    base, dataset = make_inputs(tmp / "inputs", args.rows)
    url, token, worker_log = start_hub(tmp, procs, args.torch_threads)
    hub = Hub(url, token, cache_dir=tmp / "client-cache", progress=False)
    hub.push(base, "acme/bench-base", kind="model")
    hub.push(dataset, "acme/bench-data")

    cold = hub_run(hub, worker_log, procs[0].pid)
    ways = ("hub", "plain", "trainer")
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    for i in range(args.repeats):  # interleaved, the order rotating, so drift on this noisy machine hits all alike
        for way in ways[i % 3:] + ways[:i % 3]:
            print(f"repeat {i + 1}/{args.repeats}: {way} ...", flush=True)
            runs[way].append(hub_run(hub, worker_log, procs[0].pid) if way == "hub" else
                             script_run(way, base, dataset, tmp / f"{way}-out", args.torch_threads))
    hub.close()

    med, ok = statistics.median, {True: "ok", False: "MISSED"}
    m = {way: {k: med(r[k] for r in rs) for k in ("tokens/s", "overhead", "e2e", *(("step",) if way != "trainer" else ()))}
         for way, rs in runs.items()}
    def paired(k: str, other: str) -> float:  # the median of each repeat's ratio: runs of one repeat ran back to back
        return med(h[k] / o[k] for h, o in zip(runs["hub"], runs[other]))

    step_x, total_x, trainer_x = paired("step", "plain"), paired("tokens/s", "plain"), paired("tokens/s", "trainer")
    goals = {"vs Trainer": trainer_x >= 1.3, "recipe overhead": step_x >= 0.95, "outside the loop": m["hub"]["overhead"] < 3.0}
    x = lambda v: f"{int(v * 100) / 100:.2f}x"  # noqa: E731 - truncated, so 0.94x never shows as 0.95x
    hub0, plain0, trainer0 = runs["hub"][0], runs["plain"][0], runs["trainer"][0]
    padding = 1 - trainer0["tokens"] / trainer0["padded tokens"]
    shape = ", ".join(f"{k} {v}" for k, v in plain0["row tokens"].items())
    print(f"\n{args.rows} prompt/completion rows ({shape} tokens), {plain0['tokens']} tokens, one epoch (LoRA r={HP['r']} on q/k/v/o, "
          f"4-layer hidden-256 Llama, lr {HP['learning_rate']}): hub and plain loop {hub0['steps']} steps of {HP['batch_size']} "
          f"packed sequences of <= {HP['max_seq_length']} tokens; Trainer {trainer0['steps']} steps of {TRAINER_BATCH} rows, "
          f"{100 * padding:.0f}% of its batch tokens padding. Torch threads {args.torch_threads}; median of {args.repeats}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; ratios are medians of each repeat's ratio")
    rows = [
        ("measurement", "hub job", "plain loop", "Trainer", "hub/plain", "hub/Trainer", "goal", ""),
        ("useful tokens/s, training loop (all steps)", f"{m['hub']['tokens/s']:.0f}", f"{m['plain']['tokens/s']:.0f}",
         f"{m['trainer']['tokens/s']:.0f}", x(total_x), x(trainer_x), ">= 1.3x Trainer", ok[goals["vs Trainer"]]),
        ("useful tokens/s, median step", f"{m['hub']['step']:.0f}", f"{m['plain']['step']:.0f}", "", x(step_x), "",
         ">= 0.95x plain", ok[goals["recipe overhead"]]),
        ("outside the loop, s", f"{m['hub']['overhead']:.2f}", f"{m['plain']['overhead']:.2f}", f"{m['trainer']['overhead']:.2f}",
         "", "", "< 3 s (hub)", ok[goals["outside the loop"]]),
        ("end to end, s", f"{m['hub']['e2e']:.2f}", f"{m['plain']['e2e']:.2f}", f"{m['trainer']['e2e']:.2f}", "", "", "", ""),
        ("1st job, fresh worker: outside loop / e2e, s", f"{cold['overhead']:.2f} / {cold['e2e']:.2f}", "", "", "", "", "", ""),
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in [rows[0], tuple("-" * w for w in widths), *rows[1:]]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    parts = {way: {k: med(r["parts"][k] for r in rs) for k in rs[0]["parts"]} for way, rs in runs.items() if way != "trainer"}
    print("\n".join([
        "",
        "hub job, where the time goes (median s; worker log): " + ", ".join(f"{k} {v:.2f}" for k, v in parts["hub"].items()),
        "  1st job: " + ", ".join(f"{k} {v:.2f}" for k, v in cold["parts"].items()),
        "plain loop (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts["plain"].items()),
        f"same rows: {hub0['tokens']} / {plain0['tokens']} / {trainer0['tokens']} useful tokens (hub / plain / Trainer); "
        f"final loss {hub0['final_loss']:.5f} / {plain0['final_loss']:.5f} / {trainer0['final_loss']:.5f}; "
        f"{hub0['metric events']} metric events per job; the hub server used "
        f"{100 * med(r['server cpu'] for r in runs['hub']):.1f}% of a core during a job.",
        "per repeat, useful tokens/s (all steps): " + "; ".join(f"{way} " + ", ".join(f"{r['tokens/s']:.0f}" for r in rs)
                                                          for way, rs in runs.items()),
    ]))
    return all(goals.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=300, help="rows in the dataset; each run trains one epoch")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads, for the worker and the scripts alike (default: all cores, as the worker)")
    parser.add_argument("--plain", nargs=3, metavar=("BASE", "DATASET", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--trainer", nargs=3, metavar=("BASE", "DATASET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for mode, way in (("plain", plain), ("trainer", trainer)):
        if getattr(args, mode):
            print(json.dumps(way(*map(Path, getattr(args, mode)), args.torch_threads)))
            return 0
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # here, and in the worker and the scripts
    return run_cleanly(run, args)


if __name__ == "__main__":
    sys.exit(main())
