"""State on the real hub for the SDK tests: pushed through its API, never written into its database.

:class:`Seed` is alice pushing repositories (datasets hold any bytes; the base model and
adapters are the tiny ones tests/conftest.py builds with examples/tiny.py) and
submitting jobs. :class:`Worker` plays a hub worker through the worker API (claim,
heartbeat, events, push the result with the job token, complete or fail), so job tests
need no training. Both talk to the server directly, not through the test's proxy, so
what the proxy records is the SDK's traffic alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pefthub import Hub, Job, Version

BASE = "acme/llama-tiny"
#: a job or its events: what a waiting or following client polls
POLL = r"/api/v1/jobs/[0-9a-f]{32}(/events)?"
#: a worker's clock reading an hour ago, to the second: the hub keeps a worker's event times
#: within a day of its own, and the CLI prints them as ``EVENT_TIME_SHOWN``
_EARLIER = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
EVENT_TIME = _EARLIER.strftime("%Y-%m-%dT%H:%M:%SZ")
EVENT_TIME_SHOWN = _EARLIER.strftime("%Y-%m-%d %H:%M:%S")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links followed) as relative path -> bytes; the
    snapshot marker ``.complete`` is left out."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != ".complete"
    }


def stored_blobs(blob_dir: Path) -> dict[str, bytes]:
    """What the hub's local blob store holds: sha256 -> bytes."""
    return {p.name: p.read_bytes() for p in blob_dir.rglob("*") if p.is_file() and len(p.name) == 64}


def write_tree(root: Path, files: Mapping[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


class Seed:
    """alice's repositories and jobs on the hub, made through its API."""

    def __init__(self, url: str, token: str, root: Path, tiny_base: Callable[[], Path],
                 tiny_adapter: Callable[[], Path]) -> None:
        self.url, self.root = url, root
        self.hub = Hub(url=url, token=token, cache_dir=root / "cache", progress=False)
        self._tiny_base, self._tiny_adapter = tiny_base, tiny_adapter
        self._folders = 0

    def close(self) -> None:
        self.hub.close()

    def folder(self, files: Mapping[str, bytes]) -> Path:
        """A fresh folder holding ``files``."""
        self._folders += 1
        return write_tree(self.root / f"folder-{self._folders}", files)

    def push(self, repo: str, files: Mapping[str, bytes], *, kind: str = "dataset", **kwargs: Any) -> Version:
        return self.hub.push(self.folder(files), repo, kind=kind, **kwargs)

    def base_folder(self) -> Path:
        """The tiny Llama's folder (a valid model: config.json and safetensors)."""
        return self._tiny_base()

    def base(self) -> Version:
        """The tiny Llama as ``acme/llama-tiny`` (a model)."""
        return self.hub.push(self.base_folder(), BASE, kind="model")

    def adapter_files(self, variant: int = 0, **config: Any) -> dict[str, bytes]:
        """The tiny LoRA on ``acme/llama-tiny``, its config naming that base (so the hub stores it as
        pushed); ``variant`` 1-255 changes one byte of the weights, making another version."""
        folder = self._tiny_adapter()
        settings = json.loads((folder / "adapter_config.json").read_text())
        settings.update(base_model_name_or_path=BASE, **config)
        weights = bytearray((folder / "adapter_model.safetensors").read_bytes())
        weights[-1] ^= variant
        return {"adapter_config.json": json.dumps(settings, indent=2).encode(), "adapter_model.safetensors": bytes(weights)}

    def adapter(self, repo: str, variant: int = 0, **kwargs: Any) -> Version:
        return self.push(repo, self.adapter_files(variant), kind="adapter", base_model=BASE, **kwargs)

    def train(self, output: str = "acme/bot", dataset: str = "acme/support-data", **kwargs: Any) -> Job:
        return self.hub.train(base_model=BASE, dataset=dataset, output=output, **kwargs)

    def newest_job(self) -> str:
        return next(self.hub.jobs()).id


class Worker:
    """A hub worker played through the worker API: its `worker`-scope token claims, each claim's job token does the rest."""

    def __init__(self, url: str, token: str, root: Path) -> None:
        self.url, self.root = url, root
        self.hub = Hub(url=url, token=token, cache_dir=root / "worker-cache", progress=False)
        self.claims: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.hub.close()

    def _post(self, job_id: str, action: str, body: dict[str, Any]) -> Any:
        with Hub(url=self.url, token=self.claims[job_id]["token"], cache_dir=self.root / "job-cache",
                 progress=False) as job_hub:
            return job_hub.request("POST", f"jobs/{job_id}/{action}", json=body)

    def _attempt(self, job_id: str) -> int:
        return self.claims[job_id]["attempt"]

    def claim(self, job_id: str) -> dict[str, Any]:
        self.claims[job_id] = self.hub.request("POST", f"jobs/{job_id}/claim", json={"worker": "test-worker"})
        return self.claims[job_id]

    def heartbeat(self, job_id: str, **progress: Any) -> dict[str, Any]:
        return self._post(job_id, "heartbeat", {"attempt": self._attempt(job_id), "progress": progress})

    def event(self, job_id: str, type: str, **data: Any) -> int:
        """One event, stamped ``EVENT_TIME``; returns its sequence number."""
        body = {"attempt": self._attempt(job_id), "events": [{"type": type, "data": data, "time": EVENT_TIME}]}
        return self._post(job_id, "events", body)["last_seq"]

    def push_result(self, job_id: str, folder: Path) -> Version:
        """Push ``folder`` to the job's output with the job token, as its result."""
        job = self.claims[job_id]["job"]
        kwargs: dict[str, Any] = {"kind": "model"}
        if job["type"] == "train":
            base = job["inputs"]["base_model"]
            kwargs = {"kind": "adapter", "base_model": f"{base['repo']}@{base['number']}"}
        with Hub(url=self.url, token=self.claims[job_id]["token"], cache_dir=self.root / "job-cache",
                 progress=False) as job_hub:
            return job_hub.push(folder, job["output"], job=job_id, **kwargs)

    def checkpoint(self, job_id: str, step: int, folder: Path, **metrics: float) -> Any:
        """Save ``folder`` as the job's checkpoint at ``step`` with the job token, as a worker does."""
        with Hub(url=self.url, token=self.claims[job_id]["token"], cache_dir=self.root / "job-cache",
                 progress=False) as job_hub:
            return job_hub.push_checkpoint(job_id, attempt=self._attempt(job_id), step=step, folder=folder,
                                           metrics=metrics)

    def complete(self, job_id: str, version: Version) -> dict[str, Any]:
        return self._post(job_id, "complete", {"attempt": self._attempt(job_id), "version": version.number})

    def succeed(self, job_id: str, folder: Path) -> Version:
        version = self.push_result(job_id, folder)
        self.complete(job_id, version)
        return version

    def fail(self, job_id: str, code: str, message: str, *, retryable: bool = False) -> dict[str, Any]:
        body = {"attempt": self._attempt(job_id), "code": code, "message": message, "retryable": retryable}
        return self._post(job_id, "fail", body)
