"""The hub's own Celery task: the reaper, run every PEFTHUB_REAP_INTERVAL seconds by `pefthub-server beat`."""

from __future__ import annotations

from pefthub.protocol.jobs import TASK_REAP
from pefthub_server.jobs.dispatch import app
from pefthub_server.jobs.services import jobs_reap


@app.task(name=TASK_REAP)
def reap_jobs() -> dict:
    return jobs_reap()
