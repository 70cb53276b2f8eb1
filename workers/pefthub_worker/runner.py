"""Run one job: claim → pull inputs → recipe → push the result (an eval job: its metrics) → complete.

A worker is an SDK client. It claims the job with its own `worker`-scope token, which can
do nothing else; the claim hands back the job's token, and every later call of the job
goes with it: pulling the pinned inputs, pushing the result, heartbeats, events, complete
or fail. That token acts for the job's owner on this job only and dies with the attempt,
so a worker can never read or write more than the job needs. While the recipe runs, a
session thread flushes events every second and heartbeats every ``heartbeat_seconds``;
a heartbeat reply asking to cancel, or a lost lease, stops the recipe at its next step.

Training saves checkpoints (every ``checkpoint_steps``, and every PEFTHUB_CHECKPOINT_SECONDS
of training, default 1800) and uploads each before the next step: synchronous, so the
files never change under the upload; an adapter's state is small next to a step's work
(a tiny model's is ~100 KB). An attempt whose claim names a checkpoint downloads it and
resumes there.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pefthub import Hub
from pefthub.errors import HubError
from pefthub.protocol import logs
from pefthub.protocol.errors import SpecError
from pefthub.protocol.jobs import EVAL, MERGE, TRAIN
from pefthub.protocol.specs import EvalSpec, MergeSpec, TrainSpec

from .capabilities import detect, worker_name
from .client import Claim, ClaimRefused, JobClient, LeaseLost, WorkerClient
from .evaluation import evaluate
from .merging import MergeError, merge
from .training import Callbacks, Cancelled, CheckpointError, DatasetError, train
from .training.recipe import checkpoint_seconds

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0


class JobSession:
    """Batches events to the hub and keeps the lease alive on a background thread."""

    def __init__(self, client: JobClient, job_id: str, attempt: int, heartbeat_seconds: float):
        self.client, self.job_id, self.attempt = client, job_id, attempt
        self.heartbeat_seconds = heartbeat_seconds
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # the thread logs with the job's id too: it runs in a copy of the caller's log context
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name=f"job-{job_id[:8]}", daemon=True)

    def __enter__(self) -> JobSession:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if not self.lease_lost.is_set():
            self.flush()

    def event(self, type: str, data: dict[str, Any]) -> None:
        stamp = datetime.now(timezone.utc).isoformat()
        with self._lock:
            self._pending.append({"type": type, "data": data, "time": stamp})

    def log(self, message: str, level: str = "info") -> None:
        log.info("%s", message)
        self.event("log", {"message": message, "level": level})

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.client.post_events(self.job_id, self.attempt, batch)
        except LeaseLost:
            self.lease_lost.set()

    def _heartbeat(self) -> None:
        try:
            beat = self.client.heartbeat(self.job_id, self.attempt)
        except LeaseLost:
            self.lease_lost.set()
            return
        if beat.cancel_requested:
            self.cancel_requested.set()

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_seconds
        while not self._stop.wait(min(FLUSH_SECONDS, self.heartbeat_seconds)):
            try:
                self.flush()
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_seconds
            except HubError as exc:  # the hub is briefly unreachable: the lease leaves some slack
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            if self.lease_lost.is_set():
                return


def _pinned(item: dict[str, Any]) -> str:
    """An input exactly as the job pinned it: by its manifest digest."""
    return f"{item['repo']}@{item['digest']}"


def _numbered(item: dict[str, Any]) -> str:
    """An input by its version number, for people to read."""
    return f"{item['repo']}@{item['number']}"


def _dataset_file(folder: Path, name: str | None, field: str = "hyperparameters.dataset_file") -> Path:
    if name:
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents or not path.is_file():
            raise SpecError(field, f"{field}: the dataset has no file `{name}`")
        return path
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        raise SpecError("dataset", "dataset: the dataset version holds no *.jsonl file")
    return files[0]


def _uploader(hub: Hub, session: JobSession, job_id: str):
    """``Callbacks.on_checkpoint``: upload the state; a hub that no longer knows the attempt stops the run."""
    def upload(folder: Path, step: int, metrics: dict[str, Any]) -> None:
        try:
            hub.push_checkpoint(job_id, attempt=session.attempt, step=step, folder=folder, metrics=metrics)
        except HubError as exc:
            if exc.status in (401, 409):  # the job token died or the attempt lost the job
                session.lease_lost.set()
                return
            # training goes on: a later checkpoint, or the result, makes up for it
            session.log(f"checkpoint at step {step} not saved: {exc}", "warning")

    return upload


def _train(claim: Claim, hub: Hub, session: JobSession, work: Path):
    job = claim.job
    spec = TrainSpec.from_dict(job["spec"])
    base_pin, data_pin = job["inputs"]["base_model"], job["inputs"]["dataset"]
    parent_pin = job["inputs"].get("continue_from")
    base_dir = hub.pull(_pinned(base_pin))
    dataset = _dataset_file(hub.pull(_pinned(data_pin)), spec.hyperparameters.dataset_file)
    parent_dir = hub.pull(_pinned(parent_pin)) if parent_pin else None
    resume_from = None
    if claim.checkpoint is not None:
        step = claim.checkpoint["step"]
        resume_from = hub.pull_checkpoint(job["id"], step, work / "resume")
        session.log(f"pulled the checkpoint attempt {claim.checkpoint['attempt']} saved at step {step}")
    session.log(f"training {spec.method} on {_numbered(base_pin)} with {_numbered(data_pin)}")
    if parent_pin:
        session.log(f"continuing from {_numbered(parent_pin)}")
    callbacks = Callbacks(on_event=session.event, should_stop=session.should_stop,
                          on_checkpoint=_uploader(hub, session, job["id"]))
    result = train(method=spec.method, hyperparameters=spec.hyperparameters, base_dir=base_dir,
                   dataset_path=dataset, output_dir=work / "adapter", callbacks=callbacks, continue_from=parent_dir,
                   resume_from=resume_from, checkpoint_seconds=checkpoint_seconds(os.environ))
    lineage = {
        "job": job["id"], "attempt": session.attempt, "base_model": base_pin, "dataset": data_pin,
        **({"parent": parent_pin} if parent_pin else {}),
        "method": spec.method, "hyperparameters": spec.hyperparameters.to_dict(),
        "quantization": result.quantization,
        **({"resumed_from": {k: claim.checkpoint[k] for k in ("step", "attempt")}} if claim.checkpoint else {}),
    }
    session.log(f"pushing the adapter to {spec.output}")
    return hub.push(
        result.output_dir, spec.output, kind="adapter", base_model=_numbered(base_pin), aliases=spec.aliases,
        message=spec.message or f"{spec.method} training job {job['id']}",
        metadata={"lineage": lineage, "metrics": result.metrics}, job=job["id"],
    )


def _merge(claim: Claim, hub: Hub, session: JobSession, work: Path):
    job = claim.job
    spec = MergeSpec.from_dict(job["spec"])
    base_pin, adapter_pins = job["inputs"]["base_model"], job["inputs"]["adapters"]
    base_dir = hub.pull(_pinned(base_pin))
    adapters = [(hub.pull(_pinned(pin)), pin["weight"]) for pin in adapter_pins]
    session.log(f"merging {len(adapters)} adapter(s) into {_numbered(base_pin)} ({spec.combination})")
    result = merge(base_dir=base_dir, adapters=adapters, output_dir=work / "merged",
                   combination=spec.combination, density=spec.density, dtype=spec.dtype,
                   on_event=session.event)
    lineage = {
        "job": job["id"], "attempt": session.attempt, "base_model": base_pin, "adapters": adapter_pins,
        "combination": spec.combination, "density": spec.density, "dtype": spec.dtype,
    }
    return hub.push(result.output_dir, spec.output, kind="model", aliases=spec.aliases,
                    message=spec.message or f"merge job {job['id']}", metadata={"lineage": lineage},
                    job=job["id"])


def _evaluate(claim: Claim, hub: Hub, session: JobSession, work: Path) -> dict[str, Any]:
    """Score the pinned adapter on the pinned dataset; the metrics complete the job (no version is pushed)."""
    job = claim.job
    spec = EvalSpec.from_dict(job["spec"])
    pins = job["inputs"]
    base_dir, adapter_dir = hub.pull(_pinned(pins["base_model"])), hub.pull(_pinned(pins["adapter"]))
    dataset = _dataset_file(hub.pull(_pinned(pins["dataset"])), spec.dataset_file, "dataset_file")
    session.log(f"evaluating {_numbered(pins['adapter'])} (base {_numbered(pins['base_model'])}) "
                f"on {_numbered(pins['dataset'])}")
    metrics = evaluate(base_dir=base_dir, adapter_dir=adapter_dir, dataset_path=dataset, max_rows=spec.max_rows,
                       max_new_tokens=spec.max_new_tokens, max_seq_length=spec.max_seq_length,
                       batch_size=spec.batch_size,
                       callbacks=Callbacks(on_event=session.event, should_stop=session.should_stop))
    session.log("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in metrics.items()))
    return metrics


RECIPES = {TRAIN: _train, MERGE: _merge, EVAL: _evaluate}


def _failure(exc: BaseException) -> tuple[str, str, bool]:
    """(code, message, retryable) for what a recipe raised."""
    if isinstance(exc, SpecError):
        return "invalid_spec", str(exc), False
    if isinstance(exc, DatasetError):
        return "dataset_invalid", str(exc), False
    if isinstance(exc, MergeError):
        return "merge_failed", str(exc), False
    if isinstance(exc, CheckpointError):
        return "checkpoint_invalid", f"the job's newest checkpoint cannot be resumed: {exc}", False
    if isinstance(exc, HubError) and exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
        # the hub refused the result: retrying changes nothing
        return exc.code or "hub_refused", exc.message, False
    return "worker_error", f"{type(exc).__name__}: {exc}", True


def run_job(job_id: str, *, hub: Hub | None = None) -> str:
    """Run job ``job_id`` to its end; returns what happened (for logs and tests). Every log line meanwhile names the job."""
    with logs.bound(job_id=job_id):
        return _run_job(job_id, hub=hub)


def _run_job(job_id: str, *, hub: Hub | None) -> str:
    if threads := os.environ.get("PEFTHUB_TORCH_THREADS"):
        torch.set_num_threads(int(threads))
    worker = WorkerClient(hub or Hub(progress=False))
    try:
        claim = worker.claim(job_id, worker_name(), detect())
    except ClaimRefused as exc:
        # a redelivered or re-sent message, another worker has it, or it needs what this worker lacks
        log.info("not claimed: %s", exc)
        return "skipped"
    attempt = claim.attempt
    client = worker.job_client(claim)
    work = Path(tempfile.mkdtemp(prefix=f"pefthub-job-{job_id[:8]}-"))
    recipe = RECIPES[claim.job["type"]]
    outcome, result, failure = "succeeded", None, None
    try:
        with JobSession(client, job_id, attempt, claim.heartbeat_seconds) as session:
            try:
                result = recipe(claim, client.hub, session, work)
            except Cancelled:  # asked to cancel, or the lease was lost
                outcome = "cancelled"
            except Exception as exc:  # every failure is reported to the hub below
                log.exception("attempt %s failed", attempt)
                outcome, failure = "failed", _failure(exc)
        if session.lease_lost.is_set():
            return "lease_lost"
        if outcome == "succeeded" and isinstance(result, dict):  # an eval job's metrics
            client.complete(job_id, attempt, metrics=result)
        elif outcome == "succeeded":
            client.complete(job_id, attempt, result.number)
        elif outcome == "cancelled":
            client.fail(job_id, attempt, "cancelled", "cancelled")
        else:
            client.fail(job_id, attempt, *failure)
        return outcome
    except LeaseLost:
        return "lease_lost"
    finally:
        client.close()
        shutil.rmtree(work, ignore_errors=True)
