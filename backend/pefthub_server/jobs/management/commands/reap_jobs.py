"""Re-queue running jobs whose lease expired (up to their attempt limit), fail the rest."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from pefthub_server.jobs.services import jobs_reap


class Command(BaseCommand):
    help = "Re-queue or fail jobs whose worker stopped heartbeating (also run every PEFTHUB_REAP_INTERVAL s by beat)."

    def handle(self, *args, **opts):
        counts = jobs_reap()
        self.stdout.write(", ".join(f"{n} {what}" for what, n in counts.items()))
