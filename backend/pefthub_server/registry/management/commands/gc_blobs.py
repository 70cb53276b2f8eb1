"""Delete blobs that no version uses and that are older than a grace period."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand

from pefthub_server.registry.blobs import blobs_collect


class Command(BaseCommand):
    help = "Delete unreferenced blobs (uploads never committed) older than --older-than-hours (default 24)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than-hours", type=float, default=24.0)
        parser.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

    def handle(self, *args, **opts):
        result = blobs_collect(older_than=timedelta(hours=opts["older_than_hours"]), dry_run=opts["dry_run"])
        verb = "would delete" if result["dry_run"] else "deleted"
        self.stdout.write(f"{verb} {result['blobs']} blob(s), {result['bytes']} bytes")
