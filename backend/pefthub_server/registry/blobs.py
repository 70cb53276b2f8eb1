"""Blobs as the registry knows them: registered once verified, collected once no version uses them."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from pefthub_server.registry.models import Blob, VersionFile
from pefthub_server.registry.storage import get_blob_store


def blob_register(*, sha256: str, size: int) -> Blob:
    blob, _ = Blob.objects.get_or_create(sha256=sha256, defaults={"size": size})
    return blob


def blobs_collect(*, older_than: timedelta, dry_run: bool = False) -> dict:
    """Delete blobs no version uses (uploads never committed, pre-rewrite adapter configs).

    Only blobs older than ``older_than`` go, so a push between its negotiation and its
    commit keeps what it relies on; if one still loses a blob, its commit answers
    `missing_blob` and the SDK's next push uploads it again.
    """
    cutoff = timezone.now() - older_than
    orphans = list(Blob.objects.filter(created_at__lt=cutoff, version_files__isnull=True).values_list("sha256", "size"))
    freed = sum(size for _, size in orphans)
    if not dry_run:
        store = get_blob_store()
        for sha256, _ in orphans:
            with transaction.atomic():
                # Lock the row, then re-check: a commit may have just started using it (its
                # VersionFile insert needs this row, so it waits for us or we see it).
                locked = Blob.objects.select_for_update().filter(sha256=sha256).first()
                if locked is None or VersionFile.objects.filter(blob_id=sha256).exists():
                    continue
                store.delete(sha256)
                Blob.objects.filter(sha256=sha256).delete()
    return {"blobs": len(orphans), "bytes": freed, "dry_run": dry_run}
