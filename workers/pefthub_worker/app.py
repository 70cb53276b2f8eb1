"""The workers' Celery app and its two thin tasks. Arguments are job ids, never objects.

Configuration comes from the environment (no Django here): ``CELERY_BROKER_URL``
(empty: the embedded filesystem broker under ``PEFTHUB_BROKER_DIR``, default
``$PEFTHUB_DATA_DIR/broker``), and for the runner ``PEFTHUB_URL``/``PEFTHUB_TOKEN``
(a ``worker``-scope token).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_init

from pefthub.protocol.jobs import TASK_MERGE, TASK_TRAIN, celery_config


def broker_dir() -> Path:
    data_dir = Path(os.environ.get("PEFTHUB_DATA_DIR", ".pefthub")).expanduser().resolve()
    return Path(os.environ.get("PEFTHUB_BROKER_DIR") or data_dir / "broker")


app = Celery("pefthub_worker")
app.conf.update(celery_config(os.environ.get("CELERY_BROKER_URL") or None, broker_dir()))


@worker_init.connect
def _import_training_stack(**_) -> None:
    """Import torch, transformers and peft when the worker starts, not inside its first job.

    Measured (bench/training.py): the first job on a fresh worker spent ~3 s importing
    them, and sat queued ~1 s while torch loaded before the claim.
    """
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401


@app.task(name=TASK_TRAIN)
def train(job_id: str) -> str:
    from pefthub_worker.runner import run_job

    return run_job(job_id)


@app.task(name=TASK_MERGE)
def merge(job_id: str) -> str:
    from pefthub_worker.runner import run_job

    return run_job(job_id)
