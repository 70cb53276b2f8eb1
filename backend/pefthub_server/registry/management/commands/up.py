"""Run the hub on the embedded defaults: migrate, then serve web + API in the foreground."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Migrate, then serve the web catalogue and the API with waitress until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--threads", type=int, default=16)

    def handle(self, *args, **opts):
        from waitress import serve

        from pefthub_server.wsgi import application

        call_command("migrate", verbosity=0, interactive=False)
        db = settings.DATABASES["default"]
        self.stdout.write(
            f"PEFT Hub on http://{opts['host']}:{opts['port']}/  (API /api/v1/, docs /api/docs/, admin /admin/)\n"
            f"  database: {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('NAME')}\n"
            f"  storage:  {settings.PEFTHUB_STORAGE}\n"
            f"  data dir: {settings.DATA_DIR}"
        )
        self.stdout.flush()
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        serve(
            application, host=opts["host"], port=opts["port"], threads=opts["threads"],
            # Blobs stream through the local backend; let them be large, buffer to disk.
            max_request_body_size=settings.PEFTHUB_MAX_FILE_SIZE + 1024, channel_timeout=300,
            ident="pefthub",
        )
