"""The hub's side of the queue: a Celery app that sends job ids to the workers' queues.

The server never imports worker code: tasks are sent by name (``pefthub.train``,
``pefthub.merge``), with the job id as the only argument; broker settings come from
the shared contract (:func:`pefthub.protocol.jobs.celery_config`), so hub and workers
always agree. The hub's own periodic task (the reaper) is in :mod:`.tasks`.
"""

from __future__ import annotations

import logging

from celery import Celery
from django.conf import settings
from kombu.exceptions import ChannelError, KombuError

from pefthub.protocol.jobs import TASK_REAP, TASKS, broker_folders, celery_config

log = logging.getLogger(__name__)

app = Celery("pefthub_server")
app.conf.update(
    celery_config(settings.CELERY_BROKER_URL or None, settings.PEFTHUB_BROKER_DIR),
    beat_schedule={"reap-expired-jobs": {"task": TASK_REAP, "schedule": float(settings.PEFTHUB_REAP_INTERVAL)}},
)


def job_dispatch(*, job, queue: str | None = None) -> None:
    """Send the job's id (only) to ``queue``: its own queue, or the direct queue of a worker that can run it.

    A broker that is down does not fail the request that queued the job: the job stays
    queued and the reaper sends it again after PEFTHUB_REDISPATCH_SECONDS.
    """
    if not settings.CELERY_BROKER_URL:
        broker_folders(settings.PEFTHUB_BROKER_DIR)  # the embedded broker's folder may have been wiped
    try:
        app.send_task(TASKS[job.type], args=[job.id.hex], queue=queue or job.queue)
    except (KombuError, ChannelError, OSError) as exc:  # Redis down; a broker folder gone
        log.warning("could not send job %s to queue %s (%s); the reaper sends it again in %s s",
                    job.id.hex, queue or job.queue, exc, settings.PEFTHUB_REDISPATCH_SECONDS)
