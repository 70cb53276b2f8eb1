"""Jobs on the queue: types, statuses, events, queue names, task names and the Celery settings both sides share.

The server sends a job's id (only) to its queue as task ``pefthub.train``,
``pefthub.merge`` or ``pefthub.evaluate``; a worker claims the job through the API. Pure data, no Celery
import: the server and ``pefthub-worker`` both build their Celery app from
:func:`celery_config`, so they always agree on the broker. With no
``CELERY_BROKER_URL`` the broker is kombu's filesystem transport in a folder both
sides share (the embedded default: nothing to install); with ``redis://…`` it is Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAIN = "train"
MERGE = "merge"
#: scores an adapter version on a dataset and attaches the metrics to that version; it makes no version
EVAL = "eval"
JOB_TYPES = (TRAIN, MERGE, EVAL)

QUEUED, RUNNING, CANCEL_REQUESTED = "queued", "running", "cancel_requested"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, CANCEL_REQUESTED, SUCCEEDED, FAILED, CANCELLED)
#: a worker holds the job
ACTIVE = frozenset({RUNNING, CANCEL_REQUESTED})
#: statuses a job never leaves
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})

#: event types; ``status`` events are the server's own, workers post the others
EVENT_TYPES = ("status", "log", "metric", "checkpoint", "artifact")
WORKER_EVENT_TYPES = ("log", "metric", "checkpoint", "artifact")
#: keys of a metric event that are progress rather than metrics
PROGRESS_KEYS = ("step", "total_steps", "epoch")

#: the fewest leading hex digits of a job's id that name it (`pefthub jobs show ed9ec928`), where a
#: user (not a worker) names a job; a prefix is resolved among the jobs the caller may see
JOB_ID_MIN_PREFIX = 8

QUEUES = ("gpu", "cpu")
DEFAULT_QUEUE = {TRAIN: "gpu", MERGE: "cpu", EVAL: "cpu"}
TASK_TRAIN = "pefthub.train"
TASK_MERGE = "pefthub.merge"
TASK_EVAL = "pefthub.evaluate"
TASKS = {TRAIN: TASK_TRAIN, MERGE: TASK_MERGE, EVAL: TASK_EVAL}
TASK_REAP = "pefthub.reap_jobs"
#: server-side tasks (the reaper), consumed by `pefthub-server beat`
HUB_QUEUE = "hub"


def broker_folders(broker_dir: str | Path) -> tuple[Path, Path, Path]:
    """The embedded broker's (queue, processed, control) folders, made if missing (again, if someone wiped them).

    control holds kombu's exchange tables; left unset, kombu writes them to ./control of whatever folder the
    process started in.
    """
    folders = tuple(Path(broker_dir) / name for name in ("queue", "processed", "control"))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def celery_config(broker_url: str | None, broker_dir: str | Path) -> dict[str, Any]:
    """Celery configuration for ``broker_url``, or the filesystem broker under ``broker_dir``."""
    config: dict[str, Any] = {
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "task_routes": {TASK_REAP: {"queue": HUB_QUEUE}},
    }
    if broker_url:
        config["broker_url"] = broker_url
        if broker_url.startswith(("redis://", "rediss://")):
            # A training job outlives Celery's default 1 h redelivery window; a redelivered
            # message is harmless (the claim refuses it) but wasteful.
            config["broker_transport_options"] = {"visibility_timeout": 24 * 3600}
        return config
    queue, processed, control = broker_folders(broker_dir)
    config.update(
        broker_url="filesystem://localhost/",  # a host, or kombu warns at every connection
        broker_transport_options={
            "data_folder_in": str(queue), "data_folder_out": str(queue), "processed_folder": str(processed),
            "control_folder": str(control), "store_processed": False, "polling_interval": 0.1,
        },
        # The filesystem transport has no fanout: no remote control, gossip or mingle.
        worker_enable_remote_control=False,
    )
    return config
