"""PEFT Hub workers: Celery tasks that train adapters and merge them into their bases.

A worker is an SDK client with a worker token (:mod:`pefthub_worker.client`): it claims a
job, pulls the base model and the dataset, runs the recipe (:mod:`pefthub_worker.training`
or :mod:`pefthub_worker.merging`) and pushes the result (:mod:`pefthub_worker.runner`).
torch, transformers and peft are imported when the worker starts (:mod:`pefthub_worker.app`),
so its first job does not wait for them.
"""

from __future__ import annotations

__version__ = "0.1.0"
