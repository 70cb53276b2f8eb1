"""Checkpoints of training jobs, seen from the client: list them, download one, promote one to a version.

A train job's worker saves its training state every ``checkpoint_steps``; a re-queued
attempt resumes from the newest. :class:`CheckpointsMixin` gives :class:`~pefthub.Hub`
``checkpoints``, ``pull_checkpoint``, ``promote_checkpoint`` and, for workers holding a
job's token, ``push_checkpoint``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._files import collect_files
from ._http import quote_segment
from ._upload import hash_files, upload_missing
from .cache import check_manifest
from .errors import ValidationError
from .models import FileEntry, Version
from .refs import check_alias, parse_ref

if TYPE_CHECKING:
    from ._http import HTTPClient
    from .cache import Cache
    from .jobs import Job

__all__ = ["Checkpoint", "CheckpointsMixin"]


@dataclass(frozen=True)
class Checkpoint:
    """A saved training state of a job: after optimizer ``step``, by ``attempt``."""

    step: int
    attempt: int
    metrics: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    created_at: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        return cls(step=int(data["step"]), attempt=int(data["attempt"]), metrics=dict(data.get("metrics") or {}),
                   size=int(data.get("size") or 0), created_at=data.get("created_at"))


def _job_id(job: Job | str) -> str:
    return quote_segment(job if isinstance(job, str) else job.id)


class CheckpointsMixin:
    """The checkpoint half of :class:`~pefthub.Hub`."""

    if TYPE_CHECKING:
        _http: HTTPClient
        cache: Cache

        def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                    headers: Mapping[str, str] | None = None) -> Any: ...

        def _bar(self, total: int, desc: str) -> Any: ...

    def checkpoints(self, job: Job | str) -> list[Checkpoint]:
        """The job's kept checkpoints, newest first (whoever may see the job)."""
        return [Checkpoint.from_json(item) for item in self.request("GET", f"jobs/{_job_id(job)}/checkpoints")]

    def pull_checkpoint(self, job: Job | str, step: int, local_dir: str | os.PathLike[str]) -> Path:
        """Download the job's checkpoint at ``step`` into ``local_dir`` (the job's owner, or its token), verified."""
        detail = self.request("GET", f"jobs/{_job_id(job)}/checkpoints/{int(step)}")
        files = check_manifest(FileEntry.from_json(f) for f in detail.get("files") or ())
        target = Path(local_dir)
        with self._bar(sum(f.size for f in files), f"pulling checkpoint {step}") as bar:
            for entry in files:
                blob = self.cache.download(self._http, entry, on_bytes=bar.update)
                dest = target / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blob, dest)
        return target

    def push_checkpoint(self, job: Job | str, *, attempt: int, step: int, folder: str | os.PathLike[str],
                        metrics: Mapping[str, float] | None = None) -> Checkpoint:
        """Upload ``folder`` as the job's checkpoint at ``step`` (workers, with the job's token): negotiate,
        upload what the hub does not hold for the job, record."""
        local = collect_files(folder)
        if not local:
            raise ValidationError(f"{os.fspath(folder)}: no files to save as a checkpoint")
        with self._bar(sum(f.size for f in local), "hashing") as bar:
            manifest, by_sha = hash_files(local, bar.update)
        path = f"jobs/{_job_id(job)}/checkpoints"
        plan = self.request("POST", f"{path}/uploads", json={"attempt": attempt, "files": manifest})
        upload_missing(self._http, plan, by_sha, what="checkpoint", bar=self._bar)
        body = {"attempt": attempt, "step": step, "files": manifest, "metrics": dict(metrics or {})}
        return Checkpoint.from_json(self.request("POST", path, json=body))

    def promote_checkpoint(self, job: Job | str, step: int, *, output: str, aliases: Iterable[str] | str = (),
                           message: str = "") -> Version:
        """Make a version of adapter repository ``output`` from the checkpoint's adapter files; its lineage names
        the job and the step. Needs `write` on ``output`` (and to be the job's owner or a writer of its namespace)."""
        repo = parse_ref(output, allow_revision=False).repo_id
        alias_list = [check_alias(a) for a in ([aliases] if isinstance(aliases, str) else aliases)]
        return Version.from_json(self.request(
            "POST", f"jobs/{_job_id(job)}/checkpoints/{int(step)}/promote",
            json={"output": repo, "aliases": alias_list, "message": message}))
