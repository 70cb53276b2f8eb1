"""Where the SDK's settings come from: arguments, env vars, the login file.

``pefthub login`` writes ``$PEFTHUB_CONFIG_DIR/config.json`` (default
``~/.config/pefthub``) as ``{"url": ..., "token": ...}`` with mode 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from . import constants as c


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/")


def config_dir() -> Path:
    return Path(os.environ.get(c.ENV_CONFIG_DIR) or c.DEFAULT_CONFIG_DIR).expanduser()


def config_path() -> Path:
    return config_dir() / c.CONFIG_FILE_NAME


def read_config() -> dict[str, Any]:
    """The login file's contents, or ``{}`` when absent or unreadable."""
    try:
        data = json.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_config(url: str, token: str) -> Path:
    """Write the login file atomically, readable by its owner only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp creates the file 0600, so the token is never world-readable, not
    # even for the instant before a chmod.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"url": normalize_url(url), "token": token}, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_url(url: str | None, config: dict[str, Any]) -> str:
    chosen = url or os.environ.get(c.ENV_URL) or config.get("url") or c.DEFAULT_URL
    return normalize_url(str(chosen))


def resolve_token(token: str | None, url: str, config: dict[str, Any]) -> str | None:
    if token:
        return token
    if os.environ.get(c.ENV_TOKEN):
        return os.environ[c.ENV_TOKEN]
    saved = config.get("token")
    if not saved:
        return None
    # The login file's token belongs to the server it was issued by: never send
    # it to another URL someone pointed the client at.
    saved_url = config.get("url")
    if saved_url and normalize_url(str(saved_url)) != url:
        return None
    return str(saved)


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    chosen = cache_dir or os.environ.get(c.ENV_CACHE) or c.DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def resolve_progress(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    value = os.environ.get(c.ENV_DISABLE_PROGRESS_BARS, "").strip().lower()
    return value not in {"1", "true", "yes", "on"}
