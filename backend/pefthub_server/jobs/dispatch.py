"""The hub's side of the queue: a Celery app that sends job ids to the workers' queues.

The server never imports worker code: tasks are sent by name (``pefthub.train``,
``pefthub.merge``), with the job id as the only argument; broker settings come from
the shared contract (:func:`pefthub.protocol.jobs.celery_config`), so hub and workers
always agree. The hub's own periodic task (the reaper) is in :mod:`.tasks`.
"""

from __future__ import annotations

from celery import Celery
from django.conf import settings

from pefthub.protocol.jobs import TASK_REAP, TASKS, celery_config

app = Celery("pefthub_server")
app.conf.update(
    celery_config(settings.CELERY_BROKER_URL or None, settings.PEFTHUB_BROKER_DIR),
    beat_schedule={"reap-expired-jobs": {"task": TASK_REAP, "schedule": float(settings.PEFTHUB_REAP_INTERVAL)}},
)


def job_dispatch(*, job) -> None:
    """Send the job's id (only) to its queue."""
    app.send_task(TASKS[job.type], args=[job.id.hex], queue=job.queue)
