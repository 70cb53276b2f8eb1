"""PEFT Hub's Python SDK: push, pull and find adapters, models and datasets.

    from pefthub import Hub
    hub = Hub()                                    # PEFTHUB_URL, PEFTHUB_TOKEN
    hub.push("./out", "acme/support-bot", base_model="acme/llama-tiny")
    path = hub.pull("acme/support-bot@prod")
    job = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data",
                    output="acme/support-bot", r=16)
    job.wait()                                     # progress bar; raises JobFailed
"""

from __future__ import annotations

from .client import Hub
from .constants import __version__
from .errors import (
    AuthenticationFailed,
    BadRequest,
    Conflict,
    HubConnectionError,
    HubError,
    IntegrityError,
    JobCancelled,
    JobFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    RefError,
    ServerError,
    ValidationError,
)
from .jobs import Job, JobEvent
from .models import FileEntry, Repo, Version
from .refs import Ref, parse_ref

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "Conflict",
    "FileEntry",
    "Hub",
    "HubConnectionError",
    "HubError",
    "IntegrityError",
    "Job",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Ref",
    "RefError",
    "Repo",
    "ServerError",
    "ValidationError",
    "Version",
    "__version__",
    "parse_ref",
]
