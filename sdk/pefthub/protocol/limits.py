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

#: file contents (see the server's ``registry.acceptance``): an adapter's or a model's config is
#: read whole into memory and kept, so it is small (peft's and transformers' are a few KiB)
MAX_CONFIG_JSON_SIZE = 1024 * 1024
#: any other ``*.json`` is checked without building its values: tokenizer.json is the largest
#: (Gemma's is 33 MB, Llama 3's 9 MB), so twice the largest known
MAX_JSON_SIZE = 64 * 1024 * 1024
#: README, LICENSE, ``*.md`` and ``*.txt`` are checked to be UTF-8; larger text is data, kept as ``*.jsonl``
MAX_TEXT_SIZE = 64 * 1024 * 1024
#: nesting of JSON objects and arrays, in request bodies and pushed JSON files
#: (real configs nest 3 or 4 deep; Python's parser recurses once per level)
MAX_JSON_DEPTH = 64
#: arrays and objects in one API request body: a commit of MAX_FILES files holds MAX_FILES + 2
MAX_REQUEST_CONTAINERS = 4 * MAX_FILES
#: a ``target_modules`` regex: peft matches it against every module name of the base
MAX_TARGET_REGEX_LENGTH = 1024

#: jobs (see :mod:`pefthub.protocol.jobs` and :mod:`pefthub.protocol.specs`)
MAX_ATTEMPTS = 10
DEFAULT_ATTEMPTS = 3
MAX_MESSAGE_LENGTH = 10_000
MAX_IDEMPOTENCY_KEY_LENGTH = 128
#: events a worker posts in one request, and a reader gets in one page
MAX_EVENTS_PER_BATCH = 1000
