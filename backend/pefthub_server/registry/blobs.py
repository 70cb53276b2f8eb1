"""Blobs as the registry knows them: who may cite them in a push, registered once verified,
collected once no version uses them.

Knowing a sha256 is not access. A user *possesses* a blob when it can read a version
holding it, or when it sent the hub those exact bytes within :data:`UPLOAD_GRACE`
(a :class:`BlobUpload`). Only possessed blobs are ``present`` to a push; anything else
must be uploaded, whatever the store already holds, so no answer reveals a blob the
caller cannot read. A push with a job token possesses only what its job may read (the
versions it pinned, its output repository's) and what was uploaded since it started.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import reduce

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from pefthub.protocol.manifest import ADAPTER_WEIGHTS, Entry
from pefthub_server.core import metrics
from pefthub_server.registry import acceptance
from pefthub_server.registry.models import Blob, BlobCheck, BlobUpload, Version, VersionFile
from pefthub_server.registry.selectors import readable_repositories
from pefthub_server.registry.storage import get_blob_store

#: how long an uncommitted upload stays: it counts as its user's (possession), and
#: `gc_blobs` keeps it (and partial uploads) at least this long by default
UPLOAD_GRACE = timedelta(hours=24)


def blob_register(*, sha256: str, size: int) -> Blob:
    blob, _ = Blob.objects.get_or_create(sha256=sha256, defaults={"size": size})
    return blob


def blob_uploaded(*, user_id: int, sha256: str, size: int, checkpoint: bool = False) -> Blob:
    """Register the blob user ``user_id`` just sent and the hub verified, and record that it did
    (``checkpoint``: for a job checkpoint, which a push does not count)."""
    blob = blob_register(sha256=sha256, size=size)
    metrics.PUSH_BYTES.inc(size)
    BlobUpload.objects.bulk_create(
        [BlobUpload(blob=blob, user_id=user_id, created_at=timezone.now(), checkpoint=checkpoint)],
        update_conflicts=True, unique_fields=["blob", "user", "checkpoint"], update_fields=["created_at"],
    )
    return blob


def upload_accept(*, user_id: int, sha256: str, size: int, checkpoint: bool = False) -> bool:
    """Make what user ``user_id`` uploaded (to a ``checkpoint`` target or not) the blob, once the store
    verified it, and record the upload.

    False when that user has no such upload waiting; a size or digest mismatch raises the store's 400.
    """
    if not get_blob_store().accept_upload(sha256, size, user_id=user_id, checkpoint=checkpoint):
        return False
    blob_uploaded(user_id=user_id, sha256=sha256, size=size, checkpoint=checkpoint)
    return True


def checkpoint_uploads(*, user, sha256s, since) -> dict[str, int]:
    """sha256 -> size of the blobs among ``sha256s`` that ``user`` uploaded for a checkpoint since ``since``."""
    return dict(Blob.objects.filter(sha256__in=set(sha256s), uploads__user=user, uploads__checkpoint=True,
                                    uploads__created_at__gte=since).values_list("sha256", "size").distinct())


def blob_checks_found(sha256s: Iterable[str]) -> dict[tuple[str, str], str]:
    """What earlier commits found reading these blobs: (sha256, kind) -> result as JSON text (one query)."""
    rows = BlobCheck.objects.filter(blob_id__in=set(sha256s)).values_list("blob_id", "kind", "result")
    return {(sha256, kind): result for sha256, kind, result in rows}


def blob_checks_record(found: Mapping[tuple[str, str], str]) -> None:
    """Record what reading verified blobs found (``acceptance.BlobChecks.fresh``); a result recorded already stays."""
    BlobCheck.objects.bulk_create([BlobCheck(blob_id=sha256, kind=kind, result=result)
                                   for (sha256, kind), result in found.items()], ignore_conflicts=True)


def adapter_weights_header(version: Version) -> dict[str, dict]:
    """The tensors (name -> dtype, shape, offsets) of an adapter version's weights file: what its push
    recorded reading it, or read from the store once (and recorded) when nothing was."""
    file = VersionFile.objects.get(version=version, path=ADAPTER_WEIGHTS)
    entry = Entry(file.path, file.blob_id, file.size)
    store = get_blob_store()
    checks = acceptance.BlobChecks(blob_checks_found([entry.sha256]))
    tensors = checks.result(entry, "safetensors", lambda: lambda start, length: store.read_range(entry.sha256, start, length))
    blob_checks_record(checks.fresh)
    return tensors


def _job_versions(job) -> Q:
    """The versions a job token reads: its job's pinned inputs and its output repository (``job`` duck-typed)."""
    def repo(full_name: str) -> Q:
        ns, _, name = full_name.partition("/")
        return Q(version__repository__namespace__name=ns, version__repository__name=name)

    pins = [repo(pin["repo"]) & Q(version__number=pin["number"]) for pin in job.pinned_inputs()]
    return reduce(operator.or_, pins, repo(job.output))


def blobs_possessed(*, user, sha256s, job=None) -> dict[str, int]:
    """sha256 -> size of the blobs among ``sha256s`` that ``user`` may cite in a push (one query).

    ``job``: the push is a job token's, which possesses only what its job reads, and what
    its user uploaded since the attempt started (uploads record the user, not the token).
    """
    in_readable_version = VersionFile.objects.filter(
        blob=OuterRef("pk"), version__repository__in=readable_repositories(user))
    uploaded = BlobUpload.objects.filter(blob=OuterRef("pk"), user=user, checkpoint=False,
                                         created_at__gte=timezone.now() - UPLOAD_GRACE)
    if job is not None:
        in_readable_version = in_readable_version.filter(_job_versions(job))
        uploaded = uploaded.filter(created_at__gte=job.started_at)
    # The upload first: PostgreSQL evaluates the OR in this order, and a blob in no readable version (the config a
    # client sends before the hub rewrites it) costs the version side a walk over every readable version.
    return dict(
        Blob.objects.filter(Q(Exists(uploaded)) | Q(Exists(in_readable_version)), sha256__in=set(sha256s))
        .values_list("sha256", "size")
    )


def blobs_collect(*, older_than: timedelta = UPLOAD_GRACE, dry_run: bool = False) -> dict:
    """Delete blobs no version and no job checkpoint uses (uploads never committed, pre-rewrite
    adapter configs, checkpoints pruned), and partial or never-accepted uploads left in the store.

    Only what is older than ``older_than`` goes (a blob counts as new again when someone
    re-uploads it), so a push between its negotiation and its commit keeps what it relies
    on; if one still loses a blob, its commit answers `missing_blob` and the SDK's next
    push uploads it again.
    """
    cutoff = timezone.now() - older_than
    recent_upload = BlobUpload.objects.filter(blob=OuterRef("pk"), created_at__gte=cutoff)
    orphans = list(
        # `checkpoint_files`: jobs.CheckpointFile's side; a job's checkpoints keep their blobs until pruned
        Blob.objects.filter(created_at__lt=cutoff, version_files__isnull=True, checkpoint_files__isnull=True)
        .exclude(Exists(recent_upload))
        .values_list("sha256", "size")
    )
    freed = sum(size for _, size in orphans)
    store = get_blob_store()
    stale = store.purge_stale_uploads(before=cutoff, dry_run=dry_run)
    if not dry_run:
        BlobUpload.objects.filter(created_at__lt=cutoff).delete()
        for sha256, _ in orphans:
            with transaction.atomic():
                # Lock the row, then re-check: a commit may have just started using it (its
                # VersionFile insert needs this row, so it waits for us or we see it).
                locked = Blob.objects.select_for_update().filter(sha256=sha256).first()
                if locked is None or VersionFile.objects.filter(blob_id=sha256).exists() \
                        or locked.checkpoint_files.exists():
                    continue
                if BlobUpload.objects.filter(blob_id=sha256, created_at__gte=cutoff).exists():
                    continue
                store.delete(sha256)
                Blob.objects.filter(sha256=sha256).delete()
    return {"blobs": len(orphans), "bytes": freed, "stale_uploads": stale[0], "stale_bytes": stale[1],
            "dry_run": dry_run}
