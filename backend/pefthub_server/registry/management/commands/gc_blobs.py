"""Delete blobs that no version uses, and abandoned uploads, older than a grace period."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand

from pefthub_server.registry.blobs import UPLOAD_GRACE, blobs_collect


class Command(BaseCommand):
    help = ("Delete unreferenced blobs (uploads never committed) and partial or never-committed uploads "
            f"older than --older-than-hours (default {UPLOAD_GRACE.total_seconds() / 3600:g}).")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-hours", type=float, default=UPLOAD_GRACE.total_seconds() / 3600)
        parser.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

    def handle(self, *args, **opts):
        result = blobs_collect(older_than=timedelta(hours=opts["older_than_hours"]), dry_run=opts["dry_run"])
        verb = "would delete" if result["dry_run"] else "deleted"
        self.stdout.write(f"{verb} {result['blobs']} blob(s), {result['bytes']} bytes; "
                          f"{result['stale_uploads']} abandoned upload(s), {result['stale_bytes']} bytes")
