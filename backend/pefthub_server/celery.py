"""The hub's Celery app: sends job ids to the workers' queues and runs the reaper on beat.

The server never imports worker code: tasks are sent by name (``pefthub.train``,
``pefthub.merge``). The only task defined here is the reaper, run by
``pefthub-server beat`` (a Celery worker with an embedded beat on the ``hub`` queue).
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings

from pefthub.queue_config import TASK_REAP, celery_config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pefthub_server.settings")

app = Celery("pefthub_server")
app.conf.update(
    celery_config(settings.CELERY_BROKER_URL or None, settings.PEFTHUB_BROKER_DIR),
    beat_schedule={"reap-expired-jobs": {"task": TASK_REAP, "schedule": float(settings.PEFTHUB_REAP_INTERVAL)}},
)


@app.task(name=TASK_REAP)
def reap_jobs() -> dict:
    from pefthub_server.jobs.services import jobs_reap

    return jobs_reap()
