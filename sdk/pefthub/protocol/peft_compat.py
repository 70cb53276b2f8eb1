"""Which adapter-config keys each peft release knows, so a config written by a newer peft loads in an older one.

peft writes every field of its config class to ``adapter_config.json``; an older peft
builds its config class from that file and (before 0.14) fails on a key it does not
know: ``TypeError: LoraConfig.__init__() got an unexpected keyword argument
'lora_bias'``. :func:`drop_unknown_keys` removes such keys, using the table in
``peft_compat.json`` (generated from the peft wheels by ``sdk/tools/gen_peft_compat.py``:
the exact constructor fields of every config class of every release it covers).
The SDK applies it to pulled snapshots, the server to ``<rev>+peft-<version>`` revisions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import ProtocolError
from .manifest import dump_json

__all__ = [
    "NEVER_DROPPED",
    "PeftCompatError",
    "describe_dropped",
    "drop_unknown_keys",
    "known_fields",
    "resolve_version",
    "tabled_versions",
]

#: keys peft itself needs to pick and place the config: never removed
NEVER_DROPPED = frozenset({"peft_type", "base_model_name_or_path", "task_type", "revision"})

_VERSION = re.compile(
    r"v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?"
    r"(?P<pre>(?:[-_.]?(?:a|b|rc|alpha|beta|c|pre|preview|dev)[-_.]?\d*)*)"
    r"(?:[-_.]?post[-_.]?\d*)?(?:\+[A-Za-z0-9.]+)?",
    re.IGNORECASE,
)

_Key = tuple[int, int, int, int]


class PeftCompatError(ProtocolError):
    """A peft version the table cannot serve, or an adapter no key removal makes loadable there."""

    code = "peft_version_unsupported"


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("peft_compat.json").read_text(encoding="utf-8")
    return json.loads(text)


def _key(version: str) -> _Key | None:
    """``0.13`` -> (0, 13, 0, 1); a pre/dev release sorts just below its release."""
    match = _VERSION.fullmatch(version.strip()) if isinstance(version, str) else None
    if not match:
        return None
    final = 0 if match["pre"] else 1
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0), final


def supported_range() -> str:
    versions = _table()["versions"]
    return f"peft {versions[0]} to {versions[-1]} (and newer)"


def resolve_version(peft_version: str) -> str | None:
    """The tabled release whose config fields ``peft_version`` has.

    ``"0.13"`` means 0.13.0; a release between two tabled ones takes the older one's
    fields. ``None`` means ``peft_version`` is newer than the table: it knows every key
    the table knows, and more. Raises :class:`PeftCompatError` (a ``ValueError``) for
    anything older than the table or not a version.
    """
    target = _key(peft_version)
    versions: list[str] = _table()["versions"]
    if target is None:
        raise PeftCompatError(
            f"peft_version {peft_version!r} is not a version number like '0.13' or '0.13.2': "
            f"config compatibility covers {supported_range()}"
        )
    known = [v for v in versions if _key(v) <= target]  # type: ignore[operator]
    if not known:
        raise PeftCompatError(
            f"peft {peft_version} is older than the compatibility table: it covers {supported_range()}"
        )
    if known[-1] == versions[-1] and target > _key(versions[-1]):  # type: ignore[operator]
        return None
    return known[-1]


def _fields(peft_type: str, version: str) -> frozenset[str] | None:
    for run in _table()["fields"].get(peft_type, ()):
        if version in run["versions"]:
            return frozenset(run["fields"])
    return None


def first_release(peft_type: str, key: str) -> str | None:
    """The first tabled peft release whose ``peft_type`` config has ``key``."""
    return _table()["types"].get(peft_type, {}).get(key)


def drop_unknown_keys(config: Mapping[str, Any], peft_version: str) -> tuple[dict[str, Any], list[str]]:
    """``config`` without the keys peft ``peft_version`` does not know for its peft type.

    Returns the new dict and the sorted dropped keys. A key the table has never seen
    came from a peft newer than the table: dropped for any tabled target. A target
    newer than the table keeps everything. ``peft_type``, ``base_model_name_or_path``,
    ``task_type`` and ``revision`` always stay. Raises :class:`PeftCompatError` (a
    ``ValueError``) for a version older than the table or not a version, and for a peft
    type that release lacks (no key removal makes such an adapter load there).
    """
    resolved = resolve_version(peft_version)
    out = dict(config)
    if resolved is None:
        return out, []
    peft_type = out.get("peft_type")
    if not isinstance(peft_type, str):
        raise PeftCompatError(f"the adapter config names no peft_type: cannot adjust it for peft {peft_version}")
    known = _fields(peft_type, resolved)
    if known is None:
        runs = _table()["fields"].get(peft_type)
        hint = (
            f"peft {runs[0]['versions'][0]} to {runs[-1]['versions'][-1]} have it"
            if runs
            else f"no peft from {_table()['versions'][0]} to {_table()['versions'][-1]} has it"
        )
        raise PeftCompatError(f"peft {resolved} has no {peft_type} config, so it cannot load this adapter: {hint}")
    dropped = sorted(k for k in out if k not in known and k not in NEVER_DROPPED)
    for key in dropped:
        del out[key]
    return out, dropped


@dataclass(frozen=True)
class Adjusted:
    """An adapter config adjusted for an older peft: the new file's bytes and what was dropped."""

    data: bytes
    dropped: list[str]
    peft_type: str | None


def adjust_config(data: bytes, peft_version: str) -> Adjusted | None:
    """``adapter_config.json``'s bytes without the keys peft ``peft_version`` lacks.

    None when nothing needs to go, or when the file is no JSON object (peft could not read it
    either: it is left as it is).
    """
    try:
        config = json.loads(data)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    adjusted, dropped = drop_unknown_keys(config, peft_version)
    return Adjusted(dump_json(adjusted), dropped, config.get("peft_type")) if dropped else None


def describe_dropped(dropped: list[str], peft_type: str | None) -> str:
    """``lora_bias (peft 0.14.0), use_qalora (peft 0.16.0)``: each key with the release that added it."""
    parts = []
    for key in dropped:
        since = first_release(peft_type or "", key)
        parts.append(f"{key} (peft {since})" if since else f"{key} (newer than peft {_table()['versions'][-1]})")
    return ", ".join(parts)


def tabled_versions() -> list[str]:
    """The peft releases the table covers, oldest first."""
    return list(_table()["versions"])


def known_fields(peft_type: str, peft_version: str) -> frozenset[str]:
    """The config fields peft ``peft_version`` knows for ``peft_type`` (empty if it has no such config)."""
    resolved = resolve_version(peft_version)
    if resolved is None:
        resolved = _table()["versions"][-1]
    return _fields(peft_type, resolved) or frozenset()
