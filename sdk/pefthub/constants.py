"""Names and defaults the SDK and CLI share: env vars, paths, sizes."""

from __future__ import annotations

__version__ = "0.1.0"

ENV_URL = "PEFTHUB_URL"
ENV_TOKEN = "PEFTHUB_TOKEN"
ENV_CACHE = "PEFTHUB_CACHE"
ENV_CONFIG_DIR = "PEFTHUB_CONFIG_DIR"
ENV_DISABLE_PROGRESS_BARS = "PEFTHUB_DISABLE_PROGRESS_BARS"

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CACHE_DIR = "~/.cache/pefthub"
DEFAULT_CONFIG_DIR = "~/.config/pefthub"
CONFIG_FILE_NAME = "config.json"

API_PREFIX = "/api/v1"
#: where the hub serves its Hugging Face-compatible read API
HF_PREFIX = "/hf"
ENV_HF_ENDPOINT = "HF_ENDPOINT"
ENV_HF_DISABLE_XET = "HF_HUB_DISABLE_XET"  # huggingface_hub 2 uploads by Xet when hf_xet is installed; the hub speaks LFS
ENV_HF_TOKEN = "HF_TOKEN"
# With no hub token this keeps huggingface_hub from sending the user's own
# huggingface.co token (HF_TOKEN, or the one `hf auth login` saved) to the hub.
ENV_HF_NO_IMPLICIT_TOKEN = "HF_HUB_DISABLE_IMPLICIT_TOKEN"
USER_AGENT = f"pefthub/{__version__}"

# Hashing reads big chunks (cheap syscalls); downloads stream in 1 MiB pieces so a
# progress bar moves and memory stays flat.
HASH_CHUNK_SIZE = 8 * 1024 * 1024
DOWNLOAD_CHUNK_SIZE = 1024 * 1024
UPLOAD_CHUNK_SIZE = 1024 * 1024

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
# The longest Retry-After the client waits out before retrying; a server asking for a longer
# pause (a throttled client, failed authentications) gets its 429/503 raised at once.
RETRY_AFTER_CAP = 60.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
