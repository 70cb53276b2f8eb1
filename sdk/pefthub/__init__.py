"""PEFT Hub's Python SDK: push, pull and find adapters, models and datasets.

    from pefthub import Hub
    hub = Hub()                                    # PEFTHUB_URL, PEFTHUB_TOKEN
    hub.push("./out", "acme/support-bot", base_model="acme/llama-tiny")
    path = hub.pull("acme/support-bot@prod")
    job = hub.train(base_model="acme/llama-tiny", dataset="acme/support-data",
                    output="acme/support-bot", r=16)
    job.wait()                                     # progress bar; raises JobFailed
    hub.evaluate("acme/support-bot@1", dataset="acme/heldout").wait()
    print(hub.compare("acme/support-bot@1", "acme/support-bot@2"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from .models import Evaluation, FileEntry, Repo, Version
from .refs import Ref, parse_ref

if TYPE_CHECKING:
    from ._checkpoints import Checkpoint
    from .client import Hub
    from .jobs import Job, JobEvent

# The client (and requests, tqdm) load on first use, so `import pefthub.protocol` stays
# standard-library only: the server imports the protocol and nothing else of the SDK.
_LAZY = {"Hub": "client", "Job": "jobs", "JobEvent": "jobs", "Checkpoint": "_checkpoints"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "Checkpoint",
    "Conflict",
    "Evaluation",
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
