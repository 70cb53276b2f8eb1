"""HF benchmark: huggingface_hub through the hub's /hf API on S3 (moto), beside the SDK and raw boto3, both ways.

    python bench/hf.py [--repeats 3] [--check]

Starts moto's S3 server and `pefthub-server up --no-worker` (SQLite, PEFTHUB_STORAGE=s3://...) as subprocesses,
pushes a random-init Llama base and a real ~64 MiB peft LoRA adapter, then
- pull: downloads the adapter `--repeats` times each way (snapshot_download, Hub.pull, boto3), interleaved, into
  empty caches;
- push: uploads a fresh copy of the adapter (one byte changed, so nothing is deduplicated) `--repeats` times each way
  (HfApi.create_repo + upload_folder, Hub.push, boto3 put_object), interleaved;
and prints medians. `--check` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/hf.py` puts bench/, not the repo root, on sys.path

from bench.transfer import MIB, make_models, perturbed_copy, ratio, run_cleanly, start_s3_hub  # noqa: E402

ADAPTER = "adapter_model.safetensors"
RAW, RAW_ONE, RAW_DEFAULT, PULL, SNAP, SNAP_1MIB = (
    "raw boto3 get_object, one request", "raw boto3 download_file, one request", "raw boto3 download_file, default",
    "Hub.pull, empty cache", "snapshot_download, empty cache", "  same, DOWNLOAD_CHUNK_SIZE=1 MiB")
GOALS = (PULL, SNAP)  # each >= 0.8x RAW's MiB/s; the other rows are context
RAW_PUT, PUSH, UPLOAD_FOLDER = ("raw boto3 put_object, one request", "Hub.push, new bytes",
                                "create_repo + upload_folder, new bytes")
PUSH_GOALS = (PUSH, UPLOAD_FOLDER)  # each >= 0.8x RAW_PUT's MiB/s


class HfTrace:
    """Every request huggingface_hub sends, through its own client factory: (sent, headers in, method, host, path, status)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, float, str, str, str, int]] = []

    def install(self) -> None:
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import hf_request_event_hook

        def on_request(request) -> None:
            request.extensions["bench_sent"] = time.perf_counter()

        def on_response(response) -> None:
            r = response.request
            self.log.append((r.extensions["bench_sent"], time.perf_counter(), r.method, f"{r.url.host}:{r.url.port}",
                             r.url.path, response.status_code))

        # huggingface_hub's default client (same hook, redirects, no timeout) with two hooks added to time requests.
        set_client_factory(lambda: httpx2.Client(event_hooks={"request": [hf_request_event_hook, on_request],
                                                              "response": [on_response]},
                                                 follow_redirects=True, timeout=None))


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> bool:
    import huggingface_hub
    from boto3.s3.transfer import TransferConfig
    from huggingface_hub import constants as hf_constants

    from pefthub import Hub

    assert hf_constants.HF_HUB_DISABLE_XET, "HF_HUB_DISABLE_XET must be set before huggingface_hub is imported"
    trace = HfTrace()
    trace.install()

    s3, hub_url, token = start_s3_hub(tmp, procs)

    print("building base model and adapter ...", flush=True)
    base_dir, adapter_dir = make_models(tmp / "models", 64.0)
    original = (adapter_dir / ADAPTER).read_bytes()
    size_mib, blob_sha = len(original) / MIB, hashlib.sha256(original).hexdigest()
    with Hub(hub_url, token, cache_dir=tmp / "cache-setup", progress=False) as hub:
        hub.push(base_dir, "acme/llama-bench", kind="model")
        hub.push(adapter_dir, "acme/adapter", base_model="acme/llama-bench")
    s3.upload_file(str(adapter_dir / ADAPTER), "bench", "raw/adapter", Config=TransferConfig(multipart_threshold=1 << 40))

    def raw_get_object(dest: Path) -> None:  # one GET, streamed to disk in 1 MiB reads
        body = s3.get_object(Bucket="bench", Key="raw/adapter")["Body"]
        with dest.open("wb") as fh:
            shutil.copyfileobj(body, fh, MIB)

    def raw_download_file(dest: Path, config: TransferConfig | None = None) -> None:
        s3.download_file("bench", "raw/adapter", str(dest), Config=config)  # default: 8 MiB ranged GETs on 10 threads

    def sdk_pull(dest: Path) -> Path:
        with Hub(hub_url, token, cache_dir=dest.parent / "pefthub-cache", progress=False) as puller:
            return puller.pull("acme/adapter") / ADAPTER

    def hf_snapshot(dest: Path, chunk: int | None = None) -> Path:
        default = hf_constants.DOWNLOAD_CHUNK_SIZE  # 10 MiB; http_get reads it on every call
        hf_constants.DOWNLOAD_CHUNK_SIZE = chunk or default
        try:
            folder = huggingface_hub.snapshot_download("acme/adapter", revision="main", endpoint=f"{hub_url}/hf",
                                                       token=token, cache_dir=dest.parent / "hf-cache")
        finally:
            hf_constants.DOWNLOAD_CHUNK_SIZE = default
        return Path(folder) / ADAPTER

    ways = {RAW: raw_get_object, RAW_ONE: lambda dest: raw_download_file(dest, TransferConfig(multipart_threshold=1 << 40)),
            RAW_DEFAULT: raw_download_file, PULL: sdk_pull, SNAP: hf_snapshot,
            SNAP_1MIB: lambda dest: hf_snapshot(dest, MIB)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    faults: dict[str, list[int]] = {w: [] for w in ways}
    snaps: list[tuple[float, list]] = []  # (start, its requests) of each counted default snapshot_download
    names = list(ways)
    for i in range(args.repeats + 1):  # round 0 warms imports, connections and the hub's caches; it is not counted
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotated, so no way always goes first
            work = tmp / f"run-{i}-{names.index(name)}"
            work.mkdir()
            dest, mark, minflt = work / ADAPTER, len(trace.log), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            got = ways[name](dest) or dest
            seconds = time.perf_counter() - t0
            minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt
            assert got.read_bytes() == original, f"{name}: downloaded bytes differ from the pushed file"
            if i:
                times[name].append(seconds)
                faults[name].append(minflt)
                if name == SNAP:
                    snaps.append((t0, trace.log[mark:]))
            shutil.rmtree(work)

    hosts = {f"127.0.0.1:{hub_url.rsplit(':', 1)[1]}": "hub", f"127.0.0.1:{s3.meta.endpoint_url.rsplit(':', 1)[1]}": "S3"}
    strays = {host for _, log in snaps for *_, host, _, _ in log if host not in hosts}
    assert not strays, f"snapshot_download reached hosts other than the hub and S3 (Xet?): {strays}"
    med, n = statistics.median, args.repeats
    # When snapshot_download asked S3 for the adapter: everything before is metadata round trips to the hub.
    first_get = med(next(sent for sent, _, m, _, path, _ in log if m == "GET" and path.endswith(blob_sha)) - t0
                    for t0, log in snaps)
    hub_requests = {len([r for r in log if hosts[r[3]] == "hub"]) for _, log in snaps}

    rows, goals = rate_rows(times, size_mib, RAW, GOALS, extra={name: f"{med(faults[name]):.0f}" for name in names})
    print(f"\n{ADAPTER}: {size_mib:.1f} MiB; median of {n}; {os.cpu_count()} CPUs; huggingface_hub "
          f"{huggingface_hub.__version__}, HF_HUB_DISABLE_XET=1; bytes of every download checked equal to the pushed file")
    _table(rows, ("measurement", "median", "MiB/s", "vs get_object", "page faults", "goal", "", "runs (ms)"))

    t0, log = snaps[-1]
    print("\nOne snapshot_download (ms from the call; sent -> response headers; S3 bodies stream after):")
    for sent, got_headers, method, host, path, status in sorted(log):
        print(f"  {(sent - t0) * 1000:6.1f} -> {(got_headers - t0) * 1000:6.1f}  {method:4} {hosts[host]:3} {status}  "
              f"{path if hosts[host] == 'hub' else path[:24] + '...' + path[-8:]}")
    print("\n".join([
        f"snapshot_download sent {'/'.join(map(str, sorted(hub_requests)))} hub requests per call and asked S3 for the "
        f"adapter {first_get * 1000:.0f} ms after the call (median): repo_info, tree, then a HEAD per file.",
        f"Page faults are minor faults of this process during the call. huggingface_hub reads bodies in "
        f"{hf_constants.DOWNLOAD_CHUNK_SIZE // MIB} MiB chunks",
        "(constants.DOWNLOAD_CHUNK_SIZE): httpx2's ByteChunker builds each one in a fresh buffer, which the kernel "
        "must fault in and zero.",
    ]))
    return all(goals.values()) & push_rows(args, tmp, s3, hub_url, token, adapter_dir, trace)


def rate_rows(times: dict[str, list[float]], size_mib: float, baseline: str, goal_names: tuple[str, ...],
              extra: dict[str, str] | None = None) -> tuple[list[tuple], dict[str, bool]]:
    """One table row per way (median, MiB/s, ratio to ``baseline``, ``extra`` column, goal, runs) and whether each
    of ``goal_names`` reached 0.8x the baseline's MiB/s."""
    med = statistics.median
    base = size_mib / med(times[baseline])
    goals = {name: size_mib / med(times[name]) / base >= 0.8 for name in goal_names}
    rows = []
    for name, runs in times.items():
        rate = size_mib / med(runs)
        goal = (">= 0.80x", "ok" if goals[name] else "MISSED") if name in goals else ("", "")
        rows.append((name, f"{med(runs) * 1000:.0f} ms", f"{rate:.0f}", ratio(rate / base),
                     *([extra[name]] if extra is not None else []), *goal, ", ".join(f"{t * 1000:.0f}" for t in runs)))
    return rows, goals


def _table(rows: list[tuple], head: tuple) -> None:
    widths = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def push_rows(args: argparse.Namespace, tmp: Path, s3, hub_url: str, token: str, adapter_dir: Path, trace: HfTrace) -> bool:
    """Push a fresh copy of the adapter each way, interleaved; print the table; whether both goals are met."""
    import json

    from huggingface_hub import HfApi

    from pefthub import Hub

    api = HfApi(endpoint=f"{hub_url}/hf", token=token)
    size_mib = (adapter_dir / ADAPTER).stat().st_size / MIB
    copies = iter(range(1, 10_000))

    def fresh_copy() -> Path:  # new bytes, and the base named as loading it from the hub by id would name it
        i = next(copies)
        folder = perturbed_copy(adapter_dir, tmp / f"push-{i}", i)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "acme/llama-bench"
        (folder / "adapter_config.json").write_text(json.dumps(config))
        return folder

    def raw_put(folder: Path, i: int) -> None:
        with (folder / ADAPTER).open("rb") as fh:
            s3.put_object(Bucket="bench", Key=f"raw-put/{i}", Body=fh)

    def sdk_push(folder: Path, i: int) -> None:
        with Hub(hub_url, token, cache_dir=tmp / "push-cache", progress=False) as hub:
            hub.push(folder, f"acme/sdk-push-{i}", base_model="acme/llama-bench")

    def hf_upload(folder: Path, i: int) -> None:  # what PeftModel.push_to_hub and `hf upload` send
        api.create_repo(f"acme/hf-push-{i}", exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=f"acme/hf-push-{i}", commit_message="bench")

    ways = {RAW_PUT: raw_put, PUSH: sdk_push, UPLOAD_FOLDER: hf_upload}
    names = list(ways)
    times: dict[str, list[float]] = {w: [] for w in ways}
    hf_requests: list[int] = []
    steps: dict[str, list[float]] = {}  # upload_folder's requests by step: seconds (summed per push below)
    for i in range(args.repeats + 1):  # round 0 warms up and is not counted
        for name in names[i % len(names):] + names[: i % len(names)]:
            folder = fresh_copy()
            mark = len(trace.log)
            t0 = time.perf_counter()
            ways[name](folder, i)
            seconds = time.perf_counter() - t0
            if i:
                times[name].append(seconds)
                if name == UPLOAD_FOLDER:
                    hf_requests.append(len(trace.log) - mark)
                    for sent, got, method, _, path, _ in trace.log[mark:]:
                        step = "PUT to S3" if method == "PUT" else path.rsplit("/", 1)[-1] if "/lfs/" in path \
                            else "commit" if "/commit/" in path else "other requests"
                        steps.setdefault(step, []).append(got - sent)
            shutil.rmtree(folder)
    pushed = api.hf_hub_download(f"acme/hf-push-{args.repeats}", ADAPTER, cache_dir=tmp / "check-cache")
    assert Path(pushed).stat().st_size == (adapter_dir / ADAPTER).stat().st_size

    rows, goals = rate_rows(times, size_mib, RAW_PUT, PUSH_GOALS)
    print(f"\nPush of {ADAPTER} ({size_mib:.1f} MiB) with adapter_config.json and README.md; median of {args.repeats}; "
          "every push a new version of new bytes, validated by the hub (headers, base compatibility)")
    _table(rows, ("measurement", "median", "MiB/s", "vs put_object", "goal", "", "runs (ms)"))
    print(f"upload_folder sent {'/'.join(map(str, sorted(set(hf_requests))))} requests per push (create_repo, "
          "validate-yaml, preupload, LFS batch, PUT to S3, verify, commit); mean ms per push: "
          + ", ".join(f"{step} {sum(t) / args.repeats * 1000:.0f}" for step, t in steps.items()) + ".")
    print("`verify` is the hub accepting the upload: it hashes the staged object (moto keeps no checksum of a presigned "
          "PUT) and copies it from the caller's staging key into the blob's (CopyObject). Hub.push pays the same in its "
          "commit; on AWS S3 its checksum-signed PUT spares the hash, a headerless LFS PUT cannot.")
    return all(goals.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    return run_cleanly(run, args, prepare=_hf_environment)


def _hf_environment(tmp: Path) -> None:
    # huggingface_hub reads these at import (transformers and peft import it too): set them before anything does.
    os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HOME=str(tmp / "hf-home"))
    for key in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"):
        os.environ.pop(key, None)


if __name__ == "__main__":
    sys.exit(main())
