"""A version's manifest: file paths, entries ``{path, sha256, size}`` and the canonical digest.

A version's digest is the sha256 of its canonical manifest: the JSON list of
``{"path", "sha256", "size"}`` sorted by path, dumped with ``sort_keys=True`` and
``(",", ":")`` separators. The server computes it on commit and the SDK checks it on pull.

Paths are relative and ``/``-separated, at most 512 characters, without backslashes,
absolute or drive parts, empty, ``.``, ``..`` or ``.git`` components, control or
invisible formatting characters (bidi controls, zero-width characters), line or
paragraph separators or lone surrogates; no path is both a file and a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PathError, ProtocolError
from .limits import MAX_FILES, MAX_PATH_LENGTH
from .refs import is_sha256

#: well-known files: what peft's and transformers' save_pretrained write
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
MODEL_CARD = "README.md"

_DRIVE = re.compile(r"[A-Za-z]:")
#: Unicode categories refused in paths, and why: they hide or reorder what a reader sees
#: (after U+202E RIGHT-TO-LEFT OVERRIDE, `a<U+202E>gpj.exe` reads `aexe.jpg`), break a line, or cannot be stored
_INVISIBLE = {
    "Cc": "a control character", "Cf": "an invisible formatting character (bidi controls, zero-width characters)",
    "Zl": "a line separator", "Zp": "a paragraph separator", "Cs": "a lone surrogate, which is not a character",
}


def dump_json(value: Mapping[str, Any]) -> bytes:
    """How the hub writes a JSON file it rewrites (an adapter config): sorted keys, 2-space indent, a final newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _show(value: str, limit: int = 160) -> str:
    text = repr(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code_point(char: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``; control characters have no name, only a number."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative path, or None when it is one."""
    if not path:
        return "it is empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"it is {len(path)} characters long, over the limit of {MAX_PATH_LENGTH}"
    if bad := next((c for c in path if unicodedata.category(c) in _INVISIBLE), None):
        return f"it contains {_code_point(bad)}, {_INVISIBLE[unicodedata.category(bad)]}"
    if "\\" in path:
        return "it contains a backslash"
    if path.startswith("/") or _DRIVE.match(path):
        return "it is absolute"
    for part in path.split("/"):
        if not part:
            return "it has an empty component ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"it has a '{part}' component"
        if part.casefold() == ".git":
            return "it has a `.git` component"
    return None


def check_path(path: object, *, field: str = "path") -> str:
    """``path`` unchanged if it is a safe relative ``/``-separated path; :class:`PathError` otherwise."""
    rule = "it is not a string" if not isinstance(path, str) else path_problem(path)
    if rule is not None:
        shown = str(path)
        raise PathError(f"path `{_show(shown)}` is not allowed: {rule}; use a relative path with '/' between folders",
                        field=field, detail={"path": shown[:MAX_PATH_LENGTH], "rule": rule})
    return path  # type: ignore[return-value]


@dataclass(frozen=True)
class Entry:
    """One file of a version: where it goes and the blob that holds it."""

    path: str
    sha256: str
    size: int


def parse_manifest(files: object, *, max_files: int = MAX_FILES) -> list[Entry]:
    """Entries from JSON ``[{path, sha256, size}, ...]``, every path and hash checked before anything is used."""
    if not isinstance(files, list) or not files:
        raise ProtocolError("`files` must be a non-empty list of {path, sha256, size}.", field="files")
    if len(files) > max_files:
        raise ProtocolError(f"A version holds at most {max_files} files; this one has {len(files)}.", field="files")
    entries, seen = [], set()
    for i, item in enumerate(files):
        if not isinstance(item, Mapping):
            raise ProtocolError(f"files[{i}] must be an object {{path, sha256, size}}.", field=f"files[{i}]")
        path, sha, size = item.get("path"), item.get("sha256"), item.get("size")
        check_path(path, field=f"files[{i}].path")
        if not is_sha256(sha):
            raise ProtocolError(f"files[{i}].sha256 for `{path}` must be 64 lowercase hex characters.",
                                field=f"files[{i}].sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"files[{i}].size for `{path}` must be a non-negative integer.", field=f"files[{i}].size")
        if path in seen:
            raise PathError(f"`{path}` is listed twice.", field=f"files[{i}].path", detail={"path": path})
        seen.add(path)
        entries.append(Entry(path, sha, size))
    for entry in entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                raise PathError(f"`{folder}` is both a file and a folder in this manifest.", field="files",
                                detail={"path": folder})
    return entries


def manifest_digest(files: Iterable[Entry | Mapping[str, Any]]) -> str:
    """The hex sha256 of the canonical manifest of ``files`` (entries, or mappings with the same keys)."""
    rows = []
    for f in files:
        if isinstance(f, Mapping):
            rows.append({"path": f["path"], "sha256": f["sha256"], "size": int(f["size"])})
        else:
            rows.append({"path": f.path, "sha256": f.sha256, "size": int(f.size)})
    rows.sort(key=lambda row: row["path"])
    return hashlib.sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
