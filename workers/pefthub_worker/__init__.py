"""PEFT Hub workers: Celery tasks that train adapters and merge them into their bases.

A worker is an SDK client with a worker token: it claims a job, pulls the base model and
the dataset, runs the recipe (:mod:`pefthub_worker.training`) and pushes the result.
torch and friends are imported lazily, inside the work, never at worker start.
"""

from __future__ import annotations

__version__ = "0.1.0"
