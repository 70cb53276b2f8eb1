"""Run the hub's periodic tasks: a Celery worker on the `hub` queue with an embedded beat."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from pefthub.protocol.jobs import HUB_QUEUE


class Command(BaseCommand):
    help = "Run Celery beat and the hub's own tasks (the job reaper) in the foreground."

    def add_arguments(self, parser):
        parser.add_argument("--loglevel", default="info")

    def handle(self, *args, **opts):
        from pefthub_server.jobs.tasks import app

        app.worker_main(["worker", "--beat", "-Q", HUB_QUEUE, "--concurrency", "1", "--pool", "solo",
                         "--loglevel", opts["loglevel"], "--without-gossip", "--without-mingle"])
