"""Run the hub: migrate, serve web + API, reap expired jobs, and (embedded broker) one worker.

With the embedded broker (no CELERY_BROKER_URL) a bare machine trains end to end: `up`
also starts one `pefthub-worker` process sharing the broker folder. With
`CELERY_BROKER_URL=redis://…` jobs go to Redis for external `pefthub-worker`s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from pefthub_server.core.models import Scope
from pefthub_server.core.tokens import token_create
from pefthub_server.jobs.services import jobs_reap
from pefthub_server.registry.teams import user_ensure

log = logging.getLogger(__name__)

WORKER_USER = "pefthub-worker"


def _reap_forever(stop: threading.Event) -> None:
    while not stop.wait(settings.PEFTHUB_REAP_INTERVAL):
        try:
            close_old_connections()
            jobs_reap()
        except Exception:  # keep reaping; the next round may succeed
            log.exception("reaping jobs failed")
        finally:
            close_old_connections()


class Command(BaseCommand):
    help = "Migrate, then serve the web catalogue and the API (and one embedded worker) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--threads", type=int, default=16)
        parser.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")

    def _start_worker(self, port: int, host: str) -> subprocess.Popen | None:
        if importlib.util.find_spec("pefthub_worker") is None:
            self.stderr.write("pefthub-worker is not installed: jobs will wait in the queue (pip install -e workers)")
            return None
        user = user_ensure(username=WORKER_USER)
        _, secret = token_create(user=user, name="embedded worker", scope=Scope.WORKER, expires_in_days=30)
        client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        env = {
            **os.environ,
            "PEFTHUB_URL": f"http://{client_host}:{port}",
            "PEFTHUB_TOKEN": secret,
            "PEFTHUB_DATA_DIR": str(settings.DATA_DIR),
            "PEFTHUB_BROKER_DIR": str(settings.PEFTHUB_BROKER_DIR),
            "PEFTHUB_CACHE": os.environ.get("PEFTHUB_WORKER_CACHE", str(settings.DATA_DIR / "worker-cache")),
            "PEFTHUB_DISABLE_PROGRESS_BARS": "1",
        }
        return subprocess.Popen([sys.executable, "-m", "pefthub_worker.cli", "--queues", "gpu,cpu"], env=env)

    def handle(self, *args, **opts):
        from pefthub_server.server import serve
        from pefthub_server.wsgi import application

        call_command("migrate", verbosity=0, interactive=False)
        db = settings.DATABASES["default"]
        embedded = not settings.CELERY_BROKER_URL
        worker = None if opts["no_worker"] or not embedded else self._start_worker(opts["port"], opts["host"])
        self.stdout.write(
            f"PEFT Hub on http://{opts['host']}:{opts['port']}/  (API /api/v1/, docs /api/docs/, admin /admin/)\n"
            f"  database: {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('NAME')}\n"
            f"  storage:  {settings.PEFTHUB_STORAGE}\n"
            f"  broker:   {settings.CELERY_BROKER_URL or f'embedded ({settings.PEFTHUB_BROKER_DIR})'}\n"
            f"  worker:   {'one embedded pefthub-worker (gpu,cpu)' if worker else 'external: run pefthub-worker'}\n"
            f"  data dir: {settings.DATA_DIR}"
        )
        self.stdout.flush()
        # SIGTERM (docker stop, kill) unwinds like Ctrl-C, so the embedded worker is stopped too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        stop = threading.Event()
        threading.Thread(target=_reap_forever, args=(stop,), name="reaper", daemon=True).start()
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        try:
            serve(application, host=opts["host"], port=opts["port"], threads=opts["threads"])
        finally:
            stop.set()
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
