"""Job checkpoints: a running attempt saves its training state, a later attempt resumes from it,
its owner promotes one to a version.

A checkpoint is blobs tied to the job, never a version: its files are uploaded the way a push
uploads (negotiate which blobs are missing and where to put them, then record them, every
blob verified: possessed by the job, one of the job's earlier checkpoints, or just uploaded
and checked against its size and hash). Checkpoint uploads go to targets of their own and are
recorded as such (``BlobUpload.checkpoint``): they prove possession to the job's checkpoints,
never to a push, not even its owner's. Only the current attempt's job token records one;
only the job's owner and the job's own token read the files (a later attempt's token
resumes from them); a job keeps its newest ``PEFTHUB_CHECKPOINTS_KEPT``. Each recorded
checkpoint appends a ``checkpoint`` event (step, attempt, metrics).

Promoting makes a normal version of the output repository from the checkpoint's adapter
files alone, through the same commit as a push (``registry.push.version_create``, every
acceptance check included); its lineage names the job and the step.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.db import transaction

from pefthub.protocol.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Entry
from pefthub.protocol.refs import parse_ref
from pefthub.protocol.words import with_article
from pefthub_server.core.errors import NotFound, PermissionDenied, ValidationFailed
from pefthub_server.jobs.models import CheckpointFile, Job, JobCheckpoint, JobEvent
from pefthub_server.jobs.services import _active, _event, _extend_lease
from pefthub_server.registry import push
from pefthub_server.registry.blobs import blobs_possessed, checkpoint_uploads
from pefthub_server.registry.models import Repository, Role, Version
from pefthub_server.registry.selectors import require_namespace_role
from pefthub_server.registry.storage import get_blob_store

#: the files a checkpoint must hold: what promoting it turns into a version
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
#: metrics a checkpoint records: a few numbers, not a document
MAX_METRICS = 32


def _entries(files) -> list[Entry]:
    entries = push.manifest_entries(files)
    missing = [path for path in ADAPTER_FILES if path not in {e.path for e in entries}]
    if missing:
        raise ValidationFailed(f"A checkpoint needs the adapter as peft's save_pretrained writes it; `{missing[0]}` is "
                               "missing.", code="invalid_checkpoint", detail={"missing": missing})
    return entries


def _training(job_id, attempt: int) -> Job:
    """The running train job whose current attempt is ``attempt`` (only training saves checkpoints)."""
    with transaction.atomic():
        job = _active(job_id, attempt)
    if job.type != Job.Type.TRAIN:
        raise ValidationFailed(f"Job {job.id.hex} is {with_article(job.type)} job; only train jobs save checkpoints.",
                               code="invalid_checkpoint")
    return job


def _held(job: Job, entries: list[Entry]) -> dict[str, int]:
    """sha256 -> size of the blobs among ``entries`` the job may cite besides those it possesses for a push:
    its checkpoints' blobs, and what its owner uploaded for a checkpoint since this attempt started."""
    sha256s = {e.sha256 for e in entries}
    held = dict(CheckpointFile.objects.filter(checkpoint__job=job, blob_id__in=sha256s)
                .values_list("blob_id", "size").distinct())
    return {**checkpoint_uploads(user=job.owner, sha256s=sha256s, since=job.started_at), **held}


def checkpoint_negotiate(*, job_id, attempt: int, files, base_url: str) -> dict:
    """Which of a checkpoint's blobs the attempt must upload, and where (as a push's negotiation)."""
    job = _training(job_id, attempt)
    entries = _entries(files)
    sizes = {e.sha256: e.size for e in entries}
    present = {**blobs_possessed(user=job.owner, sha256s=sizes, job=job), **_held(job, entries)}
    store = get_blob_store()
    missing = [{"sha256": sha, "size": size,
                "upload": store.upload_target(sha, size, user_id=job.owner_id, base_url=base_url, checkpoint=True)}
               for sha, size in sizes.items() if present.get(sha) != size]
    return {"missing": missing, "present": sorted(sha for sha, size in sizes.items() if present.get(sha) == size)}


def _metrics(metrics) -> dict:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) for k, v in metrics.items()):
        raise ValidationFailed(f"metrics must be an object of at most {MAX_METRICS} finite numbers by name.",
                               detail={"field": "metrics"})
    return metrics


def checkpoint_record(*, job_id, attempt: int, step, files, metrics=None) -> JobCheckpoint:
    """Record the attempt's checkpoint at ``step`` from verified blobs; a checkpoint at the same step is replaced.

    Then only the newest ``PEFTHUB_CHECKPOINTS_KEPT`` stay (their blobs go with the next
    ``gc_blobs``), and a ``checkpoint`` event says so.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ValidationFailed(f"step must be an optimizer step >= 1, got {step!r}.", detail={"field": "step"})
    metrics = _metrics(metrics)
    entries = _entries(files)
    job = _training(job_id, attempt)
    push.verify_blobs(user=job.owner, entries=entries, job=job, granted=_held(job, entries), checkpoint=True)
    with transaction.atomic():
        job = _active(job_id, attempt)
        JobCheckpoint.objects.filter(job=job, step=step).delete()
        checkpoint = JobCheckpoint.objects.create(job=job, attempt=attempt, step=step, metrics=metrics,
                                                  size=sum(e.size for e in entries))
        CheckpointFile.objects.bulk_create([CheckpointFile(checkpoint=checkpoint, path=e.path, blob_id=e.sha256,
                                                           size=e.size) for e in entries])
        kept = JobCheckpoint.objects.filter(job=job).order_by("-step").values_list("pk", flat=True)[
            :max(settings.PEFTHUB_CHECKPOINTS_KEPT, 1)]
        JobCheckpoint.objects.filter(job=job).exclude(pk__in=list(kept)).delete()
        _event(job, JobEvent.Type.CHECKPOINT, {"step": step, "attempt": attempt, "metrics": metrics})
        _extend_lease(job, checkpoint.created_at)
    return checkpoint


def latest_checkpoint(job: Job) -> JobCheckpoint | None:
    return JobCheckpoint.objects.filter(job=job).order_by("-step").first()


def checkpoint_get(*, job: Job, step: int) -> JobCheckpoint:
    found = JobCheckpoint.objects.filter(job=job, step=step).first()
    if found is None:
        kept = list(JobCheckpoint.objects.filter(job=job).order_by("step").values_list("step", flat=True))
        raise NotFound(f"Job {job.id.hex} has no checkpoint at step {step}; it keeps "
                       + (f"steps {', '.join(map(str, kept))}." if kept else "none."),
                       detail={"steps": kept})
    return found


def require_checkpoint_reader(*, user, job: Job, job_token: bool) -> None:
    """Only the job's owner and the job's own token (which acts for the owner) read checkpoint files."""
    if not job_token and job.owner_id != user.id:
        raise PermissionDenied(f"Only {job.owner.username}, who submitted job {job.id.hex}, may download its "
                               "checkpoints; promote one to a version to share it.")


def checkpoint_promote(*, user, job: Job, step: int, output: str, aliases=(), message: str = "") -> tuple[Version, bool]:
    """A version of ``output`` made from the adapter files of the job's checkpoint at ``step``.

    The caller must have submitted the job or have `write` in the namespace it writes to, and
    `write` on ``output``; the commit is a push's, with the base the job trained on.
    """
    if job.type != Job.Type.TRAIN:
        raise ValidationFailed(f"Job {job.id.hex} is {with_article(job.type)} job; only train jobs have checkpoints.")
    if job.owner_id != user.id:
        require_namespace_role(user, job.namespace, Role.WRITE, action=f"promote checkpoints of jobs writing to `{job.output}`")
    checkpoint = checkpoint_get(job=job, step=step)
    files = [f for f in checkpoint.files.all() if f.path in ADAPTER_FILES]
    parsed = parse_ref(output, allow_revision=False, field="output")
    target = push.push_target(user=user, namespace=parsed.namespace, name=parsed.name, create=True)
    require_namespace_role(user, target.namespace, Role.WRITE, action=f"push to `{target.full_name}`", role=target.role)
    pins = job.inputs
    lineage = {"job": job.id.hex, "checkpoint_step": step, "attempt": checkpoint.attempt,
               "base_model": pins["base_model"], "dataset": pins["dataset"], "method": job.spec.get("method"),
               "hyperparameters": job.spec.get("hyperparameters")}
    return push.version_create(
        user=user, target=target, kind=Repository.Kind.ADAPTER,
        files=[{"path": f.path, "sha256": f.blob_id, "size": f.size} for f in files],
        base_model=f"{pins['base_model']['repo']}@{pins['base_model']['number']}",
        message=message or f"checkpoint at step {step} of job {job.id.hex}",
        metadata={"lineage": lineage, "metrics": checkpoint.metrics}, aliases=list(aliases),
        granted={f.blob_id: f.size for f in files},
    )

