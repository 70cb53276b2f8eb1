"""Training benchmark: one tiny-Llama LoRA run as a hub job (Redis + pefthub-worker) beside the same run as a plain script.

    python bench/training.py [--repeats 3] [--steps 400] [--torch-threads N] [--check]

Starts `pefthub-server up --no-worker` (SQLite, Redis db 14, flushed) and one `pefthub-worker`, pushes a random-init
Llama (hidden 256, 4 layers) and a prompt/completion dataset, runs one job on the fresh worker, then the same LoRA
training `--repeats` times each way, interleaved: `hub.train(...).wait()`, and this file's `--plain` mode (transformers
+ peft in a hand-written loop with the recipe's tokenisation, batching, AdamW and schedule) in a fresh interpreter.
Prints medians; `--check` exits 1 when a goal is missed.
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

ROOT, BIN = Path(__file__).resolve().parents[1], Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import REDIS_URL, answers, epoch, free_port, start  # noqa: E402  (shared process helpers)
from bench.transfer import run_cleanly  # noqa: E402

HP = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
      "learning_rate": 1e-3, "batch_size": 16, "max_seq_length": 64, "seed": 0}
# Celery's log line: "[2026-11-29 10:00:00,123: INFO/MainProcess] job <id>: training lora on ..." (local time)
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] job (\w+): (training|pushing) ", re.M)


def plain(base: Path, dataset: Path, out: Path, steps: int, threads: int) -> dict:
    """The recipe's training, written out with plain transformers + peft; seconds per phase, tokens and losses."""
    t = [time.perf_counter()]
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)  # what the worker sets per job (`--torch-threads`, default cores / concurrency)
    t.append(time.perf_counter())
    tok, cut, examples = AutoTokenizer.from_pretrained(base), HP["max_seq_length"], []
    for row in map(json.loads, dataset.read_text().splitlines()):  # loss on the completion and EOS only, as the recipe
        prompt = tok(row["prompt"], add_special_tokens=True)["input_ids"]
        completion = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append(((prompt + completion)[:cut], ([-100] * len(prompt) + completion)[:cut]))
    t.append(time.perf_counter())
    random.seed(HP["seed"])
    torch.manual_seed(HP["seed"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = False
    torch.manual_seed(HP["seed"])
    model = get_peft_model(model, LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=HP["lora_dropout"],
                                             target_modules=HP["target_modules"], bias="none", task_type="CAUSAL_LM"))
    t.append(time.perf_counter())

    def batches():  # endless, reshuffled each epoch by one seeded generator; the last batch of an epoch may be short
        rng, bs = random.Random(HP["seed"]), HP["batch_size"]
        while True:
            order = list(range(len(examples)))
            rng.shuffle(order)
            for i in range(0, len(order), bs):
                yield [examples[j] for j in order[i:i + bs]]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HP["learning_rate"], weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    stream, tokens, losses, per_step = batches(), 0, [], []
    model.train()
    t.append(last := time.perf_counter())
    for _ in range(steps):
        batch = next(stream)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        (loss := model(input_ids=input_ids, attention_mask=mask, labels=labels).loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += (n := int(mask.sum()))  # the recipe's count: every non-padding token of every micro-batch
        per_step.append(n / ((now := time.perf_counter()) - last))  # as the recipe's metric events at logging_steps=1
        last = now
    t.append(time.perf_counter())
    model.save_pretrained(out)
    t.append(time.perf_counter())
    phases = dict(zip(("imports", "tokenise", "load + wrap", "optimizer", "loop", "save"), (b - a for a, b in itertools.pairwise(t))))
    return {**phases, "tokens": tokens, "step": statistics.median(per_step), "first_loss": losses[0], "final_loss": losses[-1]}


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


def make_inputs(root: Path) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from examples import tiny

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base = root / "base"
    LlamaForCausalLM(config).save_pretrained(base, safe_serialization=True)
    tiny.make_tokenizer(512).save_pretrained(base)
    return base, tiny.make_dataset(root / "train.jsonl", rows=2000)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def hub_run(hub, steps: int, worker_log: Path, server_pid: int) -> dict:
    cpu0, t0 = cpu_seconds(server_pid), time.time()
    job = hub.train(base_model="acme/bench-base", dataset="acme/bench-data", output="acme/bench-lora", method="lora",
                    max_steps=steps, **HP).wait(timeout=900)  # polls once a second, as a user's script would
    seen, server_cpu = time.time(), cpu_seconds(server_pid) - cpu0
    metrics = job.result.metadata["metrics"]
    per_step = [e.data["tokens_per_second"] for e in job.events() if e.type == "metric" and "tokens_per_second" in e.data]
    marks = {what: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # naive = local time, as Celery logs
             for stamp, job_id, what in LOG_LINE.findall(worker_log.read_text(errors="replace")) if job_id == job.id}
    started, finished, train_s = epoch(job.started_at), epoch(job.finished_at), metrics["train_seconds"]
    return {"tokens/s": metrics["train_tokens"] / train_s, "step": statistics.median(per_step),
            "overhead": finished - started - train_s, "e2e": finished - t0, "tokens": metrics["train_tokens"],
            "metric events": len(per_step), "server cpu": server_cpu / (seen - t0),
            "first_loss": metrics["first_loss"], "final_loss": metrics["final_loss"],
            "parts": {"submit -> claimed": started - t0, "claim + pull inputs": marks["training"] - started,
                      "recipe outside the loop": marks["pushing"] - marks["training"] - train_s,
                      "push + complete": finished - marks["pushing"], "until wait() saw it": seen - finished}}


def plain_run(base: Path, dataset: Path, out: Path, steps: int, threads: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--plain", str(base), str(dataset), str(out), "--steps", str(steps),
                           "--torch-threads", str(threads)], capture_output=True, text=True, check=True)
    e2e, r = time.perf_counter() - t0, json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out)
    outside = {k: r[k] for k in ("tokenise", "load + wrap", "optimizer", "save")}  # what the recipe also does
    return {"tokens/s": r["tokens"] / r["loop"], "overhead": sum(outside.values()), "e2e": e2e,
            **{k: r[k] for k in ("step", "tokens", "first_loss", "final_loss")},
            "parts": {"interpreter + imports": e2e - r["loop"] - sum(outside.values()), **outside}}


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> bool:
    import redis

    from pefthub import Hub

    redis.Redis.from_url(REDIS_URL).flushdb()
    print("building the base model and dataset, starting the hub and a worker, a first job on it ...", flush=True)
    base, dataset = make_inputs(tmp / "inputs")
    url, token, worker_log = start_hub(tmp, procs, args.torch_threads)
    hub = Hub(url, token, cache_dir=tmp / "client-cache", progress=False)
    hub.push(base, "acme/bench-base", kind="model")
    hub.push(dataset, "acme/bench-data")

    cold = hub_run(hub, args.steps, worker_log, procs[0].pid)
    runs: dict[str, list[dict]] = {"hub": [], "plain": []}
    for i in range(args.repeats):  # interleaved, the order alternating, so drift on this noisy machine hits both alike
        for way in ("hub", "plain") if i % 2 == 0 else ("plain", "hub"):
            print(f"repeat {i + 1}/{args.repeats}: {way} ...", flush=True)
            runs[way].append(hub_run(hub, args.steps, worker_log, procs[0].pid) if way == "hub" else
                             plain_run(base, dataset, tmp / "plain-out", args.steps, args.torch_threads))
    hub.close()

    med, ok = statistics.median, {True: "ok", False: "MISSED"}
    m = {way: {k: med(r[k] for r in rs) for k in ("step", "tokens/s", "overhead", "e2e")} for way, rs in runs.items()}
    step_x, total_x = (m["hub"][k] / m["plain"][k] for k in ("step", "tokens/s"))
    goals = {"throughput": step_x >= 0.95, "overhead": m["hub"]["overhead"] < 3.0}
    x = lambda v: f"{int(v * 100) / 100:.2f}x"  # noqa: E731 - truncated, so 0.94x never shows as 0.95x
    print(f"\n{args.steps} steps x {HP['batch_size']} rows, {runs['plain'][0]['tokens']} tokens (LoRA r={HP['r']} on q/k/v/o, "
          f"4-layer hidden-256 Llama); torch threads {args.torch_threads}; median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = [
        ("measurement", "hub job", "plain script", "hub/plain", "goal", ""),
        ("training step, tokens/s (median step)", f"{m['hub']['step']:.0f}", f"{m['plain']['step']:.0f}", x(step_x),
         ">= 0.95x", ok[goals["throughput"]]),
        ("training loop, tokens/s (all steps)", f"{m['hub']['tokens/s']:.0f}", f"{m['plain']['tokens/s']:.0f}", x(total_x), "", ""),
        ("outside the loop, s", f"{m['hub']['overhead']:.2f}", f"{m['plain']['overhead']:.2f}", "", "< 3 s (hub)",
         ok[goals["overhead"]]),
        ("end to end, s", f"{m['hub']['e2e']:.2f}", f"{m['plain']['e2e']:.2f}", "", "", ""),
        ("1st job, fresh worker: outside loop / e2e, s", f"{cold['overhead']:.2f} / {cold['e2e']:.2f}", "", "", "", ""),
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in [rows[0], tuple("-" * w for w in widths), *rows[1:]]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    parts = {way: {k: med(r["parts"][k] for r in rs) for k in rs[0]["parts"]} for way, rs in runs.items()}
    hub0, plain0 = runs["hub"][0], runs["plain"][0]
    print("\n".join([
        "",
        "hub job, where the time goes (median s; worker log): " + ", ".join(f"{k} {v:.2f}" for k, v in parts["hub"].items()),
        "  1st job: " + ", ".join(f"{k} {v:.2f}" for k, v in cold["parts"].items()),
        "plain script (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts["plain"].items()),
        f"same work: {hub0['tokens']} / {plain0['tokens']} tokens, final loss {hub0['final_loss']:.5f} / "
        f"{plain0['final_loss']:.5f} (hub / plain); {hub0['metric events']} metric events per job; the hub server used "
        f"{100 * med(r['server cpu'] for r in runs['hub']):.1f}% of a core during a job.",
        "per repeat, median step / all steps tokens/s: hub " + ", ".join(f"{r['step']:.0f}/{r['tokens/s']:.0f}" for r in runs["hub"])
        + "; plain " + ", ".join(f"{r['step']:.0f}/{r['tokens/s']:.0f}" for r in runs["plain"]),
    ]))
    return all(goals.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads, for the worker and the plain script alike (default: all cores, as the worker)")
    parser.add_argument("--plain", nargs=3, metavar=("BASE", "DATASET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain(*map(Path, args.plain), args.steps, args.torch_threads)))
        return 0
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # here, and in the worker and the plain script
    return run_cleanly(run, args)


if __name__ == "__main__":
    sys.exit(main())
