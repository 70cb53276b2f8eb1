"""Bounds every part enforces the same way: names, manifests, headers, jobs, events."""

from __future__ import annotations

#: names (see :mod:`pefthub.protocol.refs`)
NAMESPACE_MAX_LENGTH = 64
NAME_MAX_LENGTH = 96
ALIAS_MAX_LENGTH = 64
#: version numbers are 1 to 999,999,999: they fit a 32-bit column
VERSION_MAX_DIGITS = 9

#: manifests (see :mod:`pefthub.protocol.manifest`)
MAX_FILES = 10_000
MAX_PATH_LENGTH = 512
#: the default of the server's PEFTHUB_MAX_FILE_SIZE: S3's single-PUT limit
MAX_FILE_SIZE = 5 * 1024**3
#: a safetensors header larger than this is refused before it is read
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

#: jobs (see :mod:`pefthub.protocol.jobs` and :mod:`pefthub.protocol.specs`)
MAX_ATTEMPTS = 10
DEFAULT_ATTEMPTS = 3
MAX_MESSAGE_LENGTH = 10_000
MAX_IDEMPOTENCY_KEY_LENGTH = 128
#: events a worker posts in one request, and a reader gets in one page
MAX_EVENTS_PER_BATCH = 1000
