"""Run the hub: migrate, serve web + API, reap expired jobs, and (embedded broker) one worker.

With the embedded broker (no CELERY_BROKER_URL) a bare machine trains end to end: `up`
also starts one `pefthub-worker` process sharing the broker folder, and supervises it: a
worker that exits is started again (after 1 s, doubling to 60 s while it keeps failing),
and a worker never outlives `up`, even a SIGKILLed one (it dies with its parent, so no
orphan shares the broker with the next `up`). With `CELERY_BROKER_URL=redis://…` jobs go
to Redis for external `pefthub-worker`s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from pefthub_server.cli import database_label, hub_record_write, hub_records
from pefthub_server.core.models import Scope
from pefthub_server.core.tokens import operator_token_create, tokens_revoke_named
from pefthub_server.jobs.services import jobs_reap
from pefthub_server.registry.teams import user_ensure

log = logging.getLogger(__name__)

WORKER_USER = "pefthub-worker"
WORKER_TOKEN_NAME = "embedded worker"


def _reap_forever(stop: threading.Event) -> None:
    while not stop.wait(settings.PEFTHUB_REAP_INTERVAL):
        try:
            close_old_connections()
            jobs_reap()
        except Exception:  # keep reaping; the next round may succeed
            log.exception("reaping jobs failed")
        finally:
            close_old_connections()


class WorkerSupervisor:
    """Runs the embedded worker on a thread of its own and starts it again when it exits.

    Restarts wait 1 s, doubling up to 60 s while the worker keeps dying; a worker that ran
    a minute counts as healthy and the next restart waits 1 s again. The worker dies with
    this thread's process (PEFTHUB_EXIT_WITH_PARENT, see pefthub_worker.cli).
    """

    FIRST_DELAY, MAX_DELAY, HEALTHY_AFTER = 1.0, 60.0, 60.0

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command, self.env = command, {**env, "PEFTHUB_EXIT_WITH_PARENT": str(os.getpid())}
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="embedded-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen | None:
        with self._lock:
            if self._stop.is_set():
                return None
            self.process = subprocess.Popen(self.command, env=self.env)
        log.info("embedded worker started (pid %s)", self.process.pid)
        return self.process

    def _run(self) -> None:
        delay = self.FIRST_DELAY
        while (process := self._spawn()) is not None:
            started = time.monotonic()
            code = process.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started >= self.HEALTHY_AFTER:
                delay = self.FIRST_DELAY
            log.warning("embedded worker (pid %s) exited with code %s; starting it again in %.0f s",
                        process.pid, code, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.MAX_DELAY)

    def stop(self, timeout: float = 20) -> None:
        """Stop restarting, then stop the worker: SIGTERM (it finishes its step), SIGKILL after ``timeout``."""
        self._stop.set()
        with self._lock:
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout=5)


def _client_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches the hub at."""
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{client_host}:{port}"


def _check_port_free(host: str, port: int) -> None:
    """Refuse before migrating or starting a worker when another process listens on ``host:port``, naming the hub there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
    there = [r for r in hub_records() if r.alive and r.url.endswith(f":{port}")]
    who = "".join(f"; the hub on {r.url} (pid {r.pid}, data dir {r.data_dir}) runs there" for r in there)
    raise CommandError(f"cannot listen on {host}:{port}: {reason}{who}. Stop it, or pick another port with --port "
                       "(./dev up: PEFTHUB_PORT=8001 ./dev up)")


class Command(BaseCommand):
    help = "Migrate, then serve the web catalogue and the API (and one embedded worker) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--threads", type=int, default=16)
        parser.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")

    def _start_worker(self, port: int, host: str) -> WorkerSupervisor | None:
        if importlib.util.find_spec("pefthub_worker") is None:
            self.stderr.write("pefthub-worker is not installed: jobs will wait in the queue (pip install -e workers)")
            return None
        user = user_ensure(username=WORKER_USER)
        tokens_revoke_named(user=user, name=WORKER_TOKEN_NAME)  # the last `up`'s worker token dies here
        _, secret = operator_token_create(user=user, name=WORKER_TOKEN_NAME, scope=Scope.WORKER, expires_in_days=30)
        env = {
            **os.environ,
            "PEFTHUB_URL": _client_url(host, port),
            "PEFTHUB_TOKEN": secret,
            "PEFTHUB_DATA_DIR": str(settings.DATA_DIR),
            "PEFTHUB_BROKER_DIR": str(settings.PEFTHUB_BROKER_DIR),
            "PEFTHUB_CACHE": os.environ.get("PEFTHUB_WORKER_CACHE", str(settings.DATA_DIR / "worker-cache")),
            "PEFTHUB_DISABLE_PROGRESS_BARS": "1",
        }
        supervisor = WorkerSupervisor([sys.executable, "-m", "pefthub_worker.cli", "--queues", "gpu,cpu"], env)
        supervisor.start()
        return supervisor

    def handle(self, *args, **opts):
        from pefthub_server.server import serve
        from pefthub_server.wsgi import application

        _check_port_free(opts["host"], opts["port"])
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
        # Other `pefthub-server` commands of this user, run from any folder, find this hub's data here.
        try:
            hub_record_write(url=_client_url(opts["host"], opts["port"]), data_dir=settings.DATA_DIR,
                             database=database_label(settings.DATA_DIR, os.environ.get("DATABASE_URL", "")))
        except OSError as exc:  # a read-only home (a locked-down container): the hub runs all the same
            log.warning("could not record this hub for other pefthub-server commands (%s); they need "
                        "PEFTHUB_DATA_DIR=%s", exc, settings.DATA_DIR)
        try:
            serve(application, host=opts["host"], port=opts["port"], threads=opts["threads"])
        finally:
            stop.set()
            if worker is not None:
                worker.stop()
