"""Transfer benchmark: SDK push/pull of a ~64 MiB LoRA adapter through a real hub on S3 (moto), beside raw boto3.

    python bench/transfer.py [--repeats 3] [--adapter-mib 64] [--check]

Starts moto's S3 server and `pefthub-server up` (SQLite, PEFTHUB_STORAGE=s3://...) as subprocesses, builds a
random-init Llama base and a real peft LoRA adapter (lora_B randomised so the bytes do not compress), then times
each transfer `--repeats` times and prints medians. `--check` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

# Run in a fresh interpreter: peak RSS growth of one cold pull, from after importing pefthub. Not ru_maxrss: Linux
# keeps the parent's high-water mark across fork+exec (this child reported the bench's ~550 MiB). VmHWM belongs to
# the child's own address space, and writing 5 to clear_refs resets it to the current RSS.
RSS_CHILD = r"""
import os, re, sys
import pefthub
def vm(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
hub = pefthub.Hub(sys.argv[1], os.environ["BENCH_TOKEN"], cache_dir=sys.argv[2], progress=False)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = vm("VmRSS")
hub.pull(sys.argv[3])
print(vm("VmHWM") - before)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path, ready_url: str) -> subprocess.Popen:
    """Start a server process (its output to `log`) and wait until `ready_url` answers."""
    with log.open("wb") as out:  # own session: a Ctrl-C reaches only us, and the finally in main() stops it
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(ready_url, timeout=1).status_code < 500:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[0]} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_models(root: Path, adapter_mib: float) -> tuple[Path, Path]:
    """A random-init Llama base and an all-linear LoRA adapter whose safetensors file is ~adapter_mib MiB."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=1024, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                         vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    base, adapter = root / "base", root / "adapter"
    model.save_pretrained(base, safe_serialization=True)
    # "all-linear" wraps every nn.Linear but lm_head; each rank costs (in + out) fp32 numbers per module.
    per_rank = sum(4 * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    rank = max(1, round(adapter_mib * MIB / per_rank))
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
    peft_model.save_pretrained(adapter)
    return base, adapter


def perturbed_copy(src: Path, dst: Path, i: int) -> Path:
    """A copy of the adapter folder whose safetensors data differs in one mantissa byte (header untouched)."""
    shutil.copytree(src, dst)
    path = dst / "adapter_model.safetensors"
    with path.open("r+b") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + header_len + 4 * i)  # byte 0 of float i: its least significant mantissa bits
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte ^ 0xFF]))
    return dst


class Traffic:
    """Wraps requests.Session.send in-process: times every request and counts blob (non-API) requests and bytes."""

    def __init__(self, hub_url: str):
        self.api_prefix = hub_url.rstrip("/") + "/api/v1/"
        self.log: list[tuple[str, str, float]] = []  # (method, url, seconds until send() returned)
        self.blob_requests = self.blob_bytes = 0

    def __enter__(self) -> Traffic:
        self._orig = orig = requests.Session.send

        def send(session, request, **kwargs):
            t0 = time.perf_counter()
            response = orig(session, request, **kwargs)
            self.log.append((request.method, request.url, time.perf_counter() - t0))
            if not request.url.startswith(self.api_prefix):
                self.blob_requests += 1
                read = response.raw.read
                def counting_read(*args, **kw):
                    data = read(*args, **kw)
                    self.blob_bytes += len(data)
                    return data
                response.raw.read = counting_read
            return response

        requests.Session.send = send
        return self

    def __exit__(self, *exc: object) -> None:
        requests.Session.send = self._orig


def ratio(x: float) -> str:
    return f"{int(x * 100) / 100:.2f}x"  # truncated, so a ratio shown as 0.80x never misses a 0.80x goal


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def push_breakdown(log: list[tuple[str, str, float]], total: float, api_prefix: str) -> dict[str, float]:
    """Seconds per push step, from the requests' own times; what no request took is local (hashing, JSON)."""
    negotiate = "negotiate (+commit if none missing)"
    parts = dict.fromkeys((negotiate, "upload PUT", "commit (server verify)"), 0.0)
    for method, url, seconds in log:
        is_commit = method == "POST" and url.rstrip("/").endswith("/versions")
        parts["upload PUT" if not url.startswith(api_prefix) else "commit (server verify)" if is_commit else negotiate] += seconds
    parts["local hashing + rest"] = total - sum(parts.values())
    return parts


def start_s3_hub(tmp: Path, procs: list[subprocess.Popen]):
    """moto's S3 server with a `bench` bucket, and `pefthub-server up --no-worker` on it: (s3 client, hub URL, token)."""
    import boto3
    from botocore.config import Config

    moto_url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, **AWS_ENV}
    procs.append(start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", moto_url.rsplit(":", 1)[1]],
                       env, tmp / "moto.log", f"{moto_url}/moto-api/"))
    s3 = boto3.session.Session().client("s3", endpoint_url=moto_url, region_name="us-east-1",
                                        aws_access_key_id="testing", aws_secret_access_key="testing",
                                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="bench")

    hub_url = f"http://127.0.0.1:{free_port()}"
    hub_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    hub_env.update(PEFTHUB_DATA_DIR=str(tmp / "hub-data"), PEFTHUB_STORAGE="s3://bench/hub", AWS_ENDPOINT_URL=moto_url)
    procs.append(start([str(BIN / "pefthub-server"), "up", "--no-worker", "--port", hub_url.rsplit(":", 1)[1]],
                       hub_env, tmp / "hub.log", f"{hub_url}/api/v1/"))
    token = subprocess.run([str(BIN / "pefthub-server"), "adduser", "bench", "--team", "acme", "--role", "admin"],
                           env=hub_env, capture_output=True, text=True, check=True).stdout.strip()
    return s3, hub_url, token


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> bool:
    from boto3.s3.transfer import TransferConfig

    from pefthub import Hub

    s3, hub_url, token = start_s3_hub(tmp, procs)

    print("building base model and adapter ...", flush=True)
    base_dir, adapter_dir = make_models(tmp / "models", args.adapter_mib)
    adapter_file = adapter_dir / "adapter_model.safetensors"
    size_mib = adapter_file.stat().st_size / MIB
    hub = Hub(hub_url, token, cache_dir=tmp / "cache-setup", progress=False)
    hub.push(base_dir, "acme/llama-bench", kind="model")

    n, med = args.repeats, statistics.median
    # boto3's default transfer splits 64 MiB into 8 MiB parts sent or fetched on 10 threads; "one request" is
    # what the SDK does (one PUT, one GET). Ratios and the goal use the faster of the two.
    modes = {"default": TransferConfig(), "one request": TransferConfig(multipart_threshold=1 << 40)}
    up: dict[str, list[float]] = {m: [] for m in modes}
    down: dict[str, list[float]] = {m: [] for m in modes}
    push, breakdowns, cold, cold_bytes, warm, warm_requests, warm_bytes = [], [], [], [], [], 0, 0
    for i in range(n):  # interleaved, so drift on this noisy machine hits every measurement alike
        for j, (mode, config) in enumerate(modes.items()):
            key, dest = f"raw/{i}-{j}", str(tmp / "raw.safetensors")
            up[mode].append(timed(lambda k=key, c=config: s3.upload_file(str(adapter_file), "bench", k, Config=c)))
            down[mode].append(timed(lambda k=key, c=config, d=dest: s3.download_file("bench", k, d, Config=c)))
            os.unlink(dest)
        folder, ref = perturbed_copy(adapter_dir, tmp / f"push-{i}", i), f"acme/adapter-{i}"
        with Traffic(hub_url) as traffic:
            push.append(timed(lambda f=folder, r=ref: hub.push(f, r, base_model="acme/llama-bench")))
        breakdowns.append(push_breakdown(traffic.log, push[-1], traffic.api_prefix))
        puller = Hub(hub_url, token, cache_dir=tmp / f"cache-{i}", progress=False)
        with Traffic(hub_url) as traffic:
            cold.append(timed(lambda p=puller, r=ref: p.pull(r)))
        cold_bytes.append(traffic.blob_bytes)
        with Traffic(hub_url) as traffic:
            warm.append(timed(lambda p=puller, r=ref: p.pull(r)))
        warm_requests, warm_bytes = warm_requests + traffic.blob_requests, warm_bytes + traffic.blob_bytes
        assert (puller.pull(ref) / adapter_file.name).read_bytes() == (folder / adapter_file.name).read_bytes()
        puller.close()
        shutil.rmtree(folder)  # caches stay until the end: tmp goes as a whole
    def head16() -> None:  # what the hub's validation does to read a safetensors header
        s3.get_object(Bucket="bench", Key="raw/0-0", Range="bytes=0-15")["Body"].read()
    range_get = med(timed(head16) for _ in range(n))
    data = adapter_file.read_bytes()
    sha_time = med(timed(lambda: hashlib.sha256(data)) for _ in range(n))

    rss = []
    for i in range(n):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, hub_url, str(tmp / f"rss-cache-{i}"), f"acme/adapter-{i}"],
                             env={**os.environ, "BENCH_TOKEN": token}, capture_output=True, text=True, check=True)
        rss.append(int(out.stdout.strip().splitlines()[-1]) / MIB)

    rate = {(verb, m): size_mib / med(t[m]) for verb, t in (("upload", up), ("download", down)) for m in modes}
    best = {verb: max(rate[verb, m] for m in modes) for verb in ("upload", "download")}
    sdk_push, sdk_cold = size_mib / med(push), size_mib / med(cold)
    push_x, pull_x = sdk_push / best["upload"], sdk_cold / best["download"]
    goals = {"cold pull": pull_x >= 0.8, "warm pull": med(warm) < 0.050 and warm_bytes == 0, "pull RSS": med(rss) < 64}
    ok = {True: "ok", False: "MISSED"}
    rows = [(f"raw boto3 {verb}_file, {m}", f"{med(t[m]) * 1000:.0f} ms", f"{rate[verb, m]:.0f}", ratio(rate[verb, m] / best[verb]),
             "", "") for verb, t in (("upload", up), ("download", down)) for m in modes]
    rows += [
        ("SDK push, cold", f"{med(push) * 1000:.0f} ms", f"{sdk_push:.0f}", ratio(push_x), "(none)", ""),
        ("SDK pull, cold", f"{med(cold) * 1000:.0f} ms", f"{sdk_cold:.0f}", ratio(pull_x), ">= 0.80x", ok[goals["cold pull"]]),
        ("SDK pull, warm", f"{med(warm) * 1000:.1f} ms", "", f"{warm_requests} blob req, {warm_bytes} B",
         "< 50 ms, 0 B", ok[goals["warm pull"]]),
        ("SDK pull, peak RSS growth", f"{med(rss):.1f} MiB", "", "", "< 64 MiB", ok[goals["pull RSS"]]),
    ]
    head = ("measurement", "median", "MiB/s", "vs best raw", "goal", "")
    widths = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]
    print(f"\nadapter_model.safetensors: {size_mib:.1f} MiB; median of {n}; {os.cpu_count()} CPUs")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    print("\n" + "\n".join([
        f"SDK cold pull vs boto3 download_file, default config: {ratio(sdk_cold / rate['download', 'default'])}. "
        f"Blob bytes per cold pull: {', '.join(f'{b / MIB:.1f} MiB' for b in cold_bytes)}.",
        f"The SDK sha256-verifies every byte it pulls on a worker thread ({sha_time * 1000:.0f} ms per {size_mib:.0f} MiB here, "
        "on the cores moto uses too) and asks the API first; boto3 checks nothing.",
        "SDK push, where the time goes (median s): " + ", ".join(f"{k} {med(b[k] for b in breakdowns):.2f}" for k in breakdowns[0]),
        "The commit runs verify(): moto keeps no ChecksumSHA256 for presigned PUTs, so the hub GETs the object back and hashes it;",
        f"validation reads each file's first 64 KiB with one ranged GET, {range_get * 1000:.0f} ms on moto at {size_mib:.0f} MiB "
        "(moto copies the whole object per range request).",
    ]))
    return all(goals.values())


def run_cleanly(run, args: argparse.Namespace, prepare=None) -> int:
    """``run(args, tmp, procs)`` in a temp dir; stop every process it started and delete the dir, on `kill` too.

    ``prepare(tmp)`` runs first (e.g. to point a library's caches into ``tmp``). Exit 1 on a missed goal with --check.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below on `kill` too
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="pefthub-bench-"))
    try:
        if prepare is not None:
            prepare(tmp)
        met = run(args, tmp, procs)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if met or not args.check else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapter-mib", type=float, default=64.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    return run_cleanly(run, args)


if __name__ == "__main__":
    sys.exit(main())
