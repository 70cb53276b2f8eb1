"""`pefthub-server serve`: the production server. gunicorn, N worker processes x threads, no migrations, no worker.

It checks what it can before it starts (the database is migrated, proxy settings make sense),
makes the folder the workers share their metrics in, then *becomes* gunicorn's master
(``exec``): signals reach gunicorn directly. ``SIGHUP`` starts new workers and retires the old
ones gracefully (no request is dropped); ``SIGTERM`` stops after the requests in flight.
The master does not load Django; each worker does.

Defaults, from measurement on a 2-core machine (bench/server.py): workers = 2 per core, threads = 8
(``PEFTHUB_SERVER_WORKERS``, ``PEFTHUB_SERVER_THREADS``, or ``--workers``/``--threads``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from pefthub_server.core.env import env_int
from pefthub_server.server import check_proxy_settings

log = logging.getLogger(__name__)

THREADS = 8


def default_workers() -> int:
    return 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def unapplied_migrations() -> list[str]:
    """``app.migration`` names the database lacks."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    return [f"{migration.app_label}.{migration.name}" for migration, _ in plan]


def metrics_folder() -> Path:
    """The folder gunicorn's workers write their metrics to: PROMETHEUS_MULTIPROC_DIR (emptied), or a new one."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # a previous server's counts would be added to this one's
            stale.unlink()
        return folder
    for stale in Path(tempfile.gettempdir()).glob("pefthub-metrics-*-*"):  # of servers killed (SIGKILL) before on_exit
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            shutil.rmtree(stale, ignore_errors=True)
    # this process's pid names it: exec keeps the pid, so it is gunicorn's master's
    folder = Path(tempfile.mkdtemp(prefix=f"pefthub-metrics-{os.getpid()}-"))
    os.environ["PEFTHUB_METRICS_DIR_OWNED"] = "1"  # gunicorn_conf.on_exit removes it
    return folder


class Command(BaseCommand):
    help = "Serve the web catalogue and the API with gunicorn: N processes x threads, no migrations, no worker."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="0.0.0.0")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=env_int("PEFTHUB_SERVER_WORKERS", default_workers()),
                            help="processes (PEFTHUB_SERVER_WORKERS; default 2 per core)")
        parser.add_argument("--threads", type=int, default=env_int("PEFTHUB_SERVER_THREADS", THREADS),
                            help=f"threads per process (PEFTHUB_SERVER_THREADS; default {THREADS})")

    def handle(self, *args, **opts):
        if opts["workers"] < 1 or opts["threads"] < 1:
            raise CommandError("--workers and --threads must be at least 1")
        check_proxy_settings()
        try:
            missing = unapplied_migrations()
        except Exception as exc:
            raise CommandError(f"cannot read the database's migrations ({type(exc).__name__}: {exc}); "
                               "check DATABASE_URL") from exc
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CommandError(f"the database lacks {len(missing)} migration(s) ({shown}): run `pefthub-server migrate` "
                               "first (serve never migrates: several servers may start at once)")
        if opts["workers"] > 1 and not settings.PEFTHUB_CACHE_URL:
            log.warning("PEFTHUB_CACHE_URL is not set: each of the %s processes counts failed sign-ins on its own, "
                        "so the limits are %s times looser; set it to a Redis URL (redis://host:6379/1)",
                        opts["workers"], opts["workers"])
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_folder())
        host = f"[{opts['host']}]" if ":" in opts["host"] else opts["host"]
        argv = [sys.executable, "-m", "gunicorn", "--config", "python:pefthub_server.gunicorn_conf",
                "--bind", f"{host}:{opts['port']}", "--workers", str(opts["workers"]), "--threads", str(opts["threads"]),
                "pefthub_server.server:production_application()"]
        log.info("starting gunicorn on %s:%s with %s workers x %s threads", host, opts["port"], opts["workers"],
                 opts["threads"])
        connections.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
