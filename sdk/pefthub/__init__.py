"""PEFT Hub's Python SDK: push, pull and find adapters, models and datasets.

    from pefthub import Hub
    hub = Hub()                                    # PEFTHUB_URL, PEFTHUB_TOKEN
    hub.push("./out", "acme/support-bot", base_model="acme/llama-tiny")
    path = hub.pull("acme/support-bot@prod")
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
    NotFound,
    PermissionDenied,
    RateLimited,
    RefError,
    ServerError,
    ValidationError,
)
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
