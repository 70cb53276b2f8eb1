"""The workers' Celery app and its three thin tasks. Arguments are job ids, never objects.

Configuration comes from the environment (no Django here): ``CELERY_BROKER_URL``
(empty: the embedded filesystem broker under ``PEFTHUB_BROKER_DIR``, default
``$PEFTHUB_DATA_DIR/broker``), and for the runner ``PEFTHUB_URL``/``PEFTHUB_TOKEN``
(a ``worker``-scope token). ``PEFTHUB_LOG_FORMAT=json`` writes one JSON object per log line;
either way, every line logged while a job runs carries its id (:mod:`pefthub.protocol.logs`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_ready, worker_shutdown

from pefthub.protocol import logs
from pefthub.protocol.jobs import TASK_EVAL, TASK_MERGE, TASK_TRAIN, celery_config


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


class JobTextFormatter(logging.Formatter):
    """Celery's text format, with ``[job <id>]`` before the message of every line logged during a job."""

    def __init__(self, base: logging.Formatter | None) -> None:
        super().__init__()
        self.base = base or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None) or logs.current("job_id")
        text = self.base.format(record)
        if not job_id:
            return text
        message = record.getMessage()
        return text.replace(message, f"[job {job_id}] {message}", 1) if message else f"{text} [job {job_id}]"


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_job_ids(logger: logging.Logger, **_) -> None:
    for handler in logger.handlers:
        handler.addFilter(logs.ContextFilter())
        if os.environ.get("PEFTHUB_LOG_FORMAT", "").lower() == "json":
            handler.setFormatter(logs.JsonFormatter())
        elif not isinstance(handler.formatter, JobTextFormatter):
            handler.setFormatter(JobTextFormatter(handler.formatter))


_hello_stop = threading.Event()


@worker_ready.connect
def _say_hello(**_) -> None:
    """Tell the hub this worker is connected and what it can run, now and every few seconds until it stops."""
    from pefthub_worker.capabilities import say_hello_forever

    _hello_stop.clear()
    threading.Thread(target=say_hello_forever, args=(_hello_stop,), name="hello", daemon=True).start()


@worker_shutdown.connect
def _stop_hello(**_) -> None:
    _hello_stop.set()


@app.task(name=TASK_TRAIN)
def train(job_id: str) -> str:
    from pefthub_worker.runner import run_job

    return run_job(job_id)


@app.task(name=TASK_MERGE)
def merge(job_id: str) -> str:
    from pefthub_worker.runner import run_job

    return run_job(job_id)


@app.task(name=TASK_EVAL)
def evaluate(job_id: str) -> str:
    from pefthub_worker.runner import run_job

    return run_job(job_id)
