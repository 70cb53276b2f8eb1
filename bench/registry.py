"""Registry benchmark: PEFT Hub's production server beside MLflow's model registry, same PostgreSQL, same S3 (moto).

    python bench/registry.py [--adapters 10000] [--bases 20] [--seconds 10] [--pushes 200] [--workers 2] [--check]

Starts moto's S3 server, the hub's production server (`pefthub-server serve`, or `up --no-worker` where `serve` is
missing) on PostgreSQL + Redis + S3, and MLflow's tracking server (its own venv, made once) on PostgreSQL + the same
S3. Seeds both catalogues with ``--adapters`` adapters on ``--bases`` bases, runs ANALYZE on both databases, then
measures side by side: registration of already-stored bytes from one client, the list of 100 under load (open loop
at ``--rate`` per second, closed loops at 8 and 32 clients), get-by-name and version-by-alias on new and kept-alive
connections, and idle RSS (hub server + one `pefthub-worker` against the MLflow server). `--check` exits 1 when a
goal is missed. Drops and recreates the two databases it is given.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/registry.py` puts bench/, not the repo root, on sys.path

from bench import _registry_mlflow as mlf  # noqa: E402
from bench._registry_http import Load, closed_loop, median_ms, open_loop, probe, quantile  # noqa: E402
from bench.dispatch import adduser, answers, free_port, start, stop  # noqa: E402
from bench.transfer import AWS_ENV, Traffic, push_breakdown, run_cleanly  # noqa: E402

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
PREFIX = "adapter-"


def fresh_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on ``server`` (postgres://user@host:port); its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, processes) of ``pid`` and all its descendants, in bytes. PSS shares each shared page among the
    processes mapping it, so a forking server's workers are not counted once per copy of its code."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    rss = pss = 0
    for p in tree:
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^Rss:\s+(\d+) kB", rollup, re.M).group(1)) * 1024
        pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) * 1024
    return rss, pss, len(tree)


def make_models(root: Path) -> tuple[Path, Path]:
    """A tiny random-init Llama base and a LoRA adapter on it (r=8 on q/v), as save_pretrained writes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, vocab_size=512, tie_word_embeddings=False))
    base, adapter = root / "base", root / "adapter"
    model.save_pretrained(base)
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                     task_type="CAUSAL_LM")).save_pretrained(adapter)
    return base, adapter


def start_servers(args: argparse.Namespace, tmp: Path, procs: list) -> dict:
    """moto, the hub's production server and MLflow's server, on fresh databases; what the measurements need."""
    import boto3
    import redis
    from botocore.config import Config

    hub_db = fresh_database(args.postgres, args.hub_db)
    mlflow_db = fresh_database(args.postgres, args.mlflow_db)
    redis.Redis.from_url(args.redis).flushdb()
    mlflow_bin = mlf.ensure_venv()

    moto = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PEFTHUB_STORAGE")}
    env.update(AWS_ENV)
    procs.append(start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", moto.rsplit(":", 1)[1]], env,
                       tmp / "moto.log", lambda: answers(f"{moto}/moto-api/")))
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing",
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="bench")

    hub_env = {**env, "DATABASE_URL": hub_db, "PEFTHUB_STORAGE": "s3://bench/hub", "AWS_ENDPOINT_URL": moto,
               "CELERY_BROKER_URL": args.redis, "PEFTHUB_DATA_DIR": str(tmp / "hub-data"), "DJANGO_DEBUG": "0",
               "DJANGO_SECRET_KEY": "bench-registry-" + os.urandom(16).hex()}
    server = str(BIN / "pefthub-server")
    subprocess.run([server, "migrate", "-v", "0"], env=hub_env, check=True)
    token, worker_token = adduser(hub_env, "bench", "--team", "acme", "--role", "admin"), adduser(hub_env, "w", "--scope", "worker")
    hub_url = f"http://127.0.0.1:{free_port()}"
    port = hub_url.rsplit(":", 1)[1]
    if subprocess.run([server, "serve", "--help"], env=hub_env, capture_output=True).returncode == 0:
        hub_cmd = [server, "serve", "--host", "127.0.0.1", "--port", port, "--workers", str(args.workers)]
    else:  # before `serve` existed: the embedded server, without its worker
        hub_cmd = [server, "up", "--no-worker", "--host", "127.0.0.1", "--port", port]
    hub = start(hub_cmd, hub_env, tmp / "hub.log", lambda: answers(f"{hub_url}/api/v1/"))
    procs.append(hub)

    mlflow_url = f"http://127.0.0.1:{free_port()}"
    mlflow_env = {**env, "MLFLOW_S3_ENDPOINT_URL": moto, "PATH": f"{mlflow_bin.parent}:{env.get('PATH', '')}"}
    mlflow = start(mlf.server_command(mlflow_bin, database_url=mlflow_db.replace("postgres://", "postgresql+psycopg2://"),
                                      artifact_root="s3://bench/mlflow", port=int(mlflow_url.rsplit(":", 1)[1]),
                                      workers=args.workers),
                   mlflow_env, tmp / "mlflow.log", lambda: answers(f"{mlflow_url}/health"))
    procs.append(mlflow)
    worker_env = {**hub_env, "PEFTHUB_URL": hub_url, "PEFTHUB_TOKEN": worker_token, "PEFTHUB_CACHE": str(tmp / "wcache")}
    return {"s3": s3, "hub_url": hub_url, "token": token, "hub": hub, "hub_cmd": " ".join(hub_cmd[1:]),
            "hub_env": hub_env, "hub_db": hub_db, "mlflow_url": mlflow_url, "mlflow": mlflow, "mlflow_db": mlflow_db,
            "worker_env": worker_env}


def seed(args: argparse.Namespace, tmp: Path, ctx: dict) -> tuple[Path, list[str], dict[str, float]]:
    """Both catalogues: ``--adapters`` adapters on ``--bases`` bases, each with a `prod` alias; seconds each took."""
    from pefthub import Hub

    base_dir, adapter_dir = make_models(tmp / "models")
    bases = [f"acme/base-{b:02d}" for b in range(args.bases)]
    names = [f"{PREFIX}{i:05d}" for i in range(args.adapters)]
    took = {}
    t0 = time.perf_counter()
    with Hub(ctx["hub_url"], ctx["token"], cache_dir=tmp / "cache", progress=False) as hub:
        for b, base in enumerate(bases):  # real pushes: the templates the bulk copies repeat
            hub.push(base_dir, base, kind="model")
            hub.push(adapter_dir, f"acme/{names[b]}", base_model=base, aliases=["prod"])
    subprocess.run([sys.executable, str(ROOT / "bench" / "_registry_seed.py"), str(args.adapters), PREFIX],
                   env={**ctx["hub_env"], "DJANGO_SETTINGS_MODULE": "pefthub_server.settings"}, check=True,
                   stdout=subprocess.DEVNULL)
    took["hub"] = time.perf_counter() - t0

    for path in adapter_dir.iterdir():  # the artifact every MLflow version points at, stored once
        ctx["s3"].upload_file(str(path), "bench", f"mlflow/adapter/{path.name}")
    t0 = time.perf_counter()
    mlf.Registry(ctx["mlflow_url"]).seed(names, "s3://bench/mlflow/adapter", bases, threads=args.seed_threads)
    took["mlflow"] = time.perf_counter() - t0
    analyze(ctx["hub_db"])
    analyze(ctx["mlflow_db"])
    return adapter_dir, bases, took


def settle(url: str, headers: dict[str, str], *, within: float = 0.5, limit: float = 120.0) -> None:
    """Wait until one request is answered within ``within`` s: an overloaded server first works off the backlog
    of requests whose clients gave up, which would otherwise land on the next phase."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if probe([url], headers, keep_alive=False)[0] <= within:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(1)


def registration(args: argparse.Namespace, tmp: Path, ctx: dict, adapter_dir: Path, bases: list[str]) -> dict:
    """Adapters registered per second from one client: `Hub.push` of a folder whose bytes the hub holds, into new
    repositories; MLflow's create_registered_model + create_model_version pointing at the stored artifact."""
    import requests

    from pefthub import Hub

    rates, parts = {}, []
    with Hub(ctx["hub_url"], ctx["token"], cache_dir=tmp / "cache", progress=False) as hub:
        hub.push(adapter_dir, "acme/reg-warm", base_model=bases[0])  # connection and server caches warm
        t0 = time.perf_counter()
        for i in range(args.pushes):
            with Traffic(ctx["hub_url"]) as traffic:
                t1 = time.perf_counter()
                version = hub.push(adapter_dir, f"acme/reg-{i:05d}", base_model=bases[i % len(bases)])
                took = time.perf_counter() - t1
            assert version.created and version.number == 1
            parts.append((len(traffic.log), push_breakdown(traffic.log, took, traffic.api_prefix)))
        rates["hub"] = args.pushes / (time.perf_counter() - t0)
    rates["hub requests"] = statistics.median(n for n, _ in parts)
    rates["hub parts"] = {k: statistics.median(p[k] for _, p in parts) for k in parts[0][1]}
    registry = mlf.Registry(ctx["mlflow_url"])
    with requests.Session() as session:
        registry.register(session, "reg-warm", "s3://bench/mlflow/adapter", bases[0])
        t0 = time.perf_counter()
        for i in range(args.pushes):
            registry.register(session, f"reg-{i:05d}", "s3://bench/mlflow/adapter", bases[i % len(bases)])
        rates["mlflow"] = args.pushes / (time.perf_counter() - t0)
    rates["mlflow client"] = mlf.client_rate(ctx["mlflow_url"], prefix="client-", count=args.pushes,
                                             source="s3://bench/mlflow/adapter", base=bases[0])
    return rates


def run(args: argparse.Namespace, tmp: Path, procs: list) -> bool:
    try:
        return measure(args, tmp, procs)
    finally:  # whole process groups: MLflow's and gunicorn's workers are children of the process started
        for proc in reversed(procs):
            stop(proc)


def measure(args: argparse.Namespace, tmp: Path, procs: list) -> bool:
    ctx = start_servers(args, tmp, procs)
    print(f"seeding {args.adapters} adapters on {args.bases} bases in each ...", flush=True)
    adapter_dir, bases, seed_took = seed(args, tmp, ctx)
    print("registration ...", flush=True)
    reg = registration(args, tmp, ctx, adapter_dir, bases)

    hub_auth = {"Authorization": f"Bearer {ctx['token']}"}
    lists = {"hub": (f"{ctx['hub_url']}/api/v1/repos?page_size=100", hub_auth),
             "mlflow": (f"{ctx['mlflow_url']}{mlf.API}/registered-models/search?max_results=100", {})}
    loads: dict[tuple[str, str], Load] = {}
    for system, (url, headers) in lists.items():
        print(f"list of 100 under load: {system} ...", flush=True)
        closed_loop(url, headers, clients=4, seconds=2)  # warm: every server process has answered
        loads[system, "open"] = open_loop(url, headers, rate=args.rate, seconds=args.seconds)
        for clients in (8, 32):
            settle(url, headers)
            loads[system, f"closed {clients}"] = closed_loop(url, headers, clients=clients, seconds=args.seconds)
        settle(url, headers)

    sample = random.Random(0).sample(range(args.adapters), min(args.probes, args.adapters))
    probe_urls = {
        ("hub", "get"): [f"{ctx['hub_url']}/api/v1/repos/acme/{PREFIX}{i:05d}" for i in sample],
        ("hub", "alias"): [f"{ctx['hub_url']}/api/v1/repos/acme/{PREFIX}{i:05d}/versions/prod" for i in sample],
        ("mlflow", "get"): [f"{ctx['mlflow_url']}{mlf.API}/registered-models/get?name={PREFIX}{i:05d}" for i in sample],
        ("mlflow", "alias"): [f"{ctx['mlflow_url']}{mlf.API}/registered-models/alias?name={PREFIX}{i:05d}&alias=prod"
                              for i in sample],
    }
    probes = {}
    print("get-by-name and version-by-alias ...", flush=True)
    for (system, what), urls in probe_urls.items():
        headers = hub_auth if system == "hub" else {}
        for keep_alive in (False, True):
            probe(urls[:20], headers, keep_alive=keep_alive)  # warm
            probes[system, what, keep_alive] = probe(urls, headers, keep_alive=keep_alive)

    print("idle memory (starting one pefthub-worker) ...", flush=True)
    log = tmp / "worker.log"
    worker = start([str(BIN / "pefthub-worker"), "-Q", "gpu,cpu", "--hostname", "bench@local"], ctx["worker_env"], log,
                   lambda: " ready." in log.read_text(errors="replace"))
    procs.append(worker)
    time.sleep(args.idle)
    memory = {"hub server": tree_memory(ctx["hub"].pid), "worker": tree_memory(worker.pid),
              "mlflow": tree_memory(ctx["mlflow"].pid)}
    return report(args, ctx, seed_took, reg, loads, probes, memory)


def report(args, ctx, seed_took, reg, loads, probes, memory) -> bool:
    ok = {True: "ok", False: "MISSED"}
    rows, goals = [], {}

    def row(name, hub, mlflow, better, goal="", met=None, fmt="{:.1f}"):
        rows.append((name, fmt.format(hub), fmt.format(mlflow), f"{better:.2f}x", goal, "" if met is None else ok[met]))
        if met is not None:
            goals[name] = met

    row("registration, stored bytes, 1 client (adapters/s)", reg["hub"], reg["mlflow"], reg["hub"] / reg["mlflow"],
        ">= 40/s", reg["hub"] >= 40)
    row("registration vs MlflowClient (adapters/s)", reg["hub"], reg["mlflow client"], reg["hub"] / reg["mlflow client"],
        ">= 5x", reg["hub"] >= 5 * reg["mlflow client"])
    h, m = loads["hub", "open"], loads["mlflow", "open"]
    errs = sum(h.errors.values())
    row(f"list 100, open loop {args.rate:.0f}/s: achieved (req/s)", h.rps, m.rps, h.rps / m.rps,
        f">= {0.95 * args.rate:.0f}/s", h.rps >= 0.95 * args.rate)
    row(f"list 100, open loop {args.rate:.0f}/s: p50 (ms)", h.pct(0.5) * 1000, m.pct(0.5) * 1000, m.pct(0.5) / h.pct(0.5))
    row(f"list 100, open loop {args.rate:.0f}/s: p95 (ms)", h.pct(0.95) * 1000, m.pct(0.95) * 1000,
        m.pct(0.95) / h.pct(0.95), "< 100 ms", h.pct(0.95) < 0.1)
    rows.append((f"list 100, open loop {args.rate:.0f}/s: errors", _errors(h), _errors(m), "", "0", ok[errs == 0]))
    goals["list errors"] = errs == 0
    for clients in (8, 32):
        h, m = loads["hub", f"closed {clients}"], loads["mlflow", f"closed {clients}"]
        row(f"list 100, closed loop {clients} clients (req/s)", h.rps, m.rps, h.rps / m.rps)
        row(f"list 100, closed loop {clients} clients: p95 (ms)", h.pct(0.95) * 1000, m.pct(0.95) * 1000,
            m.pct(0.95) / h.pct(0.95))
    for what, label in (("get", "get by name"), ("alias", "version by alias")):
        for keep_alive, conn in ((False, "new connection"), (True, "keep-alive")):
            hub_ms, mlflow_ms = median_ms(probes["hub", what, keep_alive]), median_ms(probes["mlflow", what, keep_alive])
            row(f"{label}, {conn}: p50 (ms)", hub_ms, mlflow_ms, mlflow_ms / hub_ms, "< 10 ms", hub_ms < 10)
    hub_rss = memory["hub server"][0] + memory["worker"][0]
    row("idle RSS, hub server + 1 worker vs MLflow server (MiB)", hub_rss / MIB, memory["mlflow"][0] / MIB,
        memory["mlflow"][0] / hub_rss, "< 1024 MiB", hub_rss < 1024 * MIB, fmt="{:.0f}")

    head = ("measurement", "PEFT Hub", "MLflow", "hub better by", "goal", "")
    widths = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]
    print(f"\n{args.adapters} adapters on {args.bases} bases in each; PostgreSQL (ANALYZE after seeding) + S3 on moto; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"hub: pefthub-server {ctx['hub_cmd']}; MLflow {mlf.VERSION}: mlflow server --workers {args.workers}")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    cpu = ", ".join(f"{s} {k}: {loads[s, k].client_cpu / loads[s, k].seconds * 100:.0f}%" for s, k in loads)
    mem = "; ".join(f"{name} RSS {rss / MIB:.0f} MiB, PSS {pss / MIB:.0f} MiB in {n} processes"
                    for name, (rss, pss, n) in memory.items())
    print("\n".join([
        f"Seeding took {seed_took['hub']:.0f} s for the hub ({args.bases} SDK pushes of a base and of an adapter, "
        f"then bulk copies of those rows) and {seed_took['mlflow']:.0f} s for MLflow (3 REST calls per adapter, "
        f"{args.seed_threads} threads).",
        f"Registration: {args.pushes} each, one after another; MLflow's figures are metadata only: 2 REST calls on raw "
        f"requests, and MlflowClient's create_registered_model + create_model_version (its SDK, as a user writes it); the "
        f"hub's is a whole Hub.push ({reg['hub requests']:.0f} requests; median ms: "
        + ", ".join(f"{k} {v * 1000:.1f}" for k, v in reg["hub parts"].items()) + ").",
        f"Load generator CPU (share of one core): {cpu}.",
        "Errors in the closed loops: " + "; ".join(f"{s} {k}: {_errors(loads[s, k])}" for s, k in loads if k != "open") + ".",
        "Open loop: latencies count from each request's scheduled start (queueing included), at most 64 requests "
        "outstanding; errors are non-200 answers and requests not sent or not answered 10 s after their start.",
        "get / alias p95 (ms), new connection / keep-alive: " + "; ".join(
            f"{s} {w} {quantile(probes[s, w, False], 0.95) * 1000:.1f} / {quantile(probes[s, w, True], 0.95) * 1000:.1f}"
            for s in ("hub", "mlflow") for w in ("get", "alias")),
        f"Idle memory: {mem}.",
    ]))
    return all(goals.values())


def _errors(load: Load) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(load.errors.items())) or "0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10_000, help="adapters seeded in each registry")
    parser.add_argument("--bases", type=int, default=20)
    parser.add_argument("--pushes", type=int, default=200, help="registrations timed in each")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop target for the list (requests/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--probes", type=int, default=200, help="names asked for in get-by-name and by-alias")
    parser.add_argument("--workers", type=int, default=2, help="server processes, for the hub and for MLflow alike")
    parser.add_argument("--seed-threads", type=int, default=8, help="MLflow seeding clients")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before memory is read")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--hub-db", default="pefthub_bench_registry_hub", help="dropped and recreated")
    parser.add_argument("--mlflow-db", default="pefthub_bench_registry_mlflow", help="dropped and recreated")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="the hub's broker (flushed)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    return run_cleanly(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
