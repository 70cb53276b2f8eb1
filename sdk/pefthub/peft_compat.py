"""``Hub.pull(..., peft_version=...)``: a pulled snapshot whose adapter configs an older peft loads.

The table and the key removal are the protocol's (:mod:`pefthub.protocol.peft_compat`);
this module applies them to a cached snapshot without touching its content-addressed
blobs: the adjusted ``adapter_config.json`` goes into a separate folder whose other
files link to the same blobs. Errors come as :class:`PeftCompatError`, an SDK
:class:`~pefthub.ValidationError`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cache import COMPLETE_MARKER, Cache, _atomic_write, _link
from .errors import ValidationError, translated
from .protocol import peft_compat as _table
from .protocol.manifest import ADAPTER_CONFIG
from .protocol.peft_compat import NEVER_DROPPED, describe_dropped, known_fields, tabled_versions

__all__ = [
    "NEVER_DROPPED",
    "PeftCompatError",
    "PeftCompatWarning",
    "compat_snapshot",
    "drop_unknown_keys",
    "known_fields",
    "resolve_version",
    "tabled_versions",
]


class PeftCompatError(ValidationError, _table.PeftCompatError):
    """A peft version the table cannot serve, or an adapter no key removal makes loadable there."""


class PeftCompatWarning(UserWarning):
    """Keys were dropped from an adapter config so an older peft loads it."""


def resolve_version(peft_version: str) -> str | None:
    """The tabled release whose config fields ``peft_version`` has; None when it is newer than the table."""
    with translated(PeftCompatError):
        return _table.resolve_version(peft_version)


def drop_unknown_keys(config: Mapping[str, Any], peft_version: str) -> tuple[dict[str, Any], list[str]]:
    """``config`` without the keys peft ``peft_version`` does not know, and the sorted dropped keys."""
    with translated(PeftCompatError):
        return _table.drop_unknown_keys(config, peft_version)


def _adjusted(path: Path, peft_version: str) -> _table.Adjusted | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    with translated(PeftCompatError):
        return _table.adjust_config(data, peft_version)


def compat_snapshot(snapshot: Path, compat_root: Path, peft_version: str) -> tuple[Path, dict[str, str]]:
    """A folder like ``snapshot`` whose ``adapter_config.json`` files peft ``peft_version`` loads.

    Returns the folder and, per config path that changed, a description of the dropped
    keys. When nothing needs to change that folder is ``snapshot`` itself. Otherwise it
    is ``compat_root/<snapshot name>-peft<release>/``: the rewritten configs as real
    files, everything else linked to what the snapshot links to (the blobs).
    """
    resolved = resolve_version(peft_version)
    if resolved is None:
        return snapshot, {}
    files = sorted(
        Path(folder, name).relative_to(snapshot)
        for folder, _dirs, names in os.walk(snapshot)
        for name in names
        if not (Path(folder) == snapshot and name == COMPLETE_MARKER)
    )
    changes: dict[Path, tuple[str, list[str], str | None]] = {}
    for rel in files:
        if rel.name == ADAPTER_CONFIG:
            adjusted = _adjusted(snapshot / rel, peft_version)
            if adjusted is not None:
                changes[rel] = adjusted
    if not changes:
        return snapshot, {}
    target = compat_root / f"{snapshot.name}-peft{resolved}"
    report = {rel.as_posix(): describe_dropped(a.dropped, a.peft_type) for rel, a in changes.items()}
    if (target / COMPLETE_MARKER).is_file():
        return target, report
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel in changes:
            _atomic_write(dest, changes[rel].data.decode())
        else:
            _link(Path(os.path.realpath(snapshot / rel)), dest)
    _atomic_write(target / COMPLETE_MARKER, f"{snapshot.name} for peft {resolved}\n")
    return target, report


def deliver(
    cache: Cache, digest_hex: str, local_dir: str | os.PathLike[str] | None, peft_version: str, label: str
) -> Path:
    """What ``Hub.pull(..., peft_version=...)`` hands out for a complete cached snapshot.

    The compat folder (or the snapshot, when nothing changes), or a copy of it in
    ``local_dir``; one :class:`PeftCompatWarning` per adjusted config.
    """
    folder, report = compat_snapshot(cache.snapshot_dir(digest_hex), cache.root / "compat", peft_version)
    for rel, dropped in report.items():
        warnings.warn(
            f"{label}: dropped from {rel} the keys peft {resolve_version(peft_version)} does not know: {dropped}",
            PeftCompatWarning,
            stacklevel=4,
        )
    if local_dir is None:
        return folder
    out = cache.export(digest_hex, Path(local_dir))
    for rel in report:  # the export copied the configs as pushed: put the adjusted ones over them
        (out / rel).unlink()
        shutil.copyfile(folder / rel, out / rel)
    return out
