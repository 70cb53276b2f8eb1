"""Local files: walk a folder to push, hash files, infer the repository kind."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import constants as c
from .errors import ValidationError
from .protocol.manifest import ADAPTER_CONFIG, MODEL_CONFIG


@dataclass(frozen=True)
class LocalFile:
    #: relative, '/'-separated path as it will appear in the manifest
    path: str
    abspath: Path
    size: int


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def collect_files(path: str | os.PathLike[str]) -> list[LocalFile]:
    """Every regular file to push from ``path``, sorted by relative path.

    A single file is pushed under its own name. In a folder, hidden files and
    folders (``.git``, ``.cache``, ``.DS_Store`` ...) are skipped, and so are
    symlinks that point outside the folder or nowhere.
    """
    root = Path(path)
    if not root.exists():
        raise ValidationError(f"{os.fspath(path)}: no such file or folder")
    if root.is_file():
        return [LocalFile(root.name, root, root.stat().st_size)]
    if not root.is_dir():
        raise ValidationError(f"{os.fspath(path)} is neither a regular file nor a folder")

    real_root = root.resolve()
    found: list[LocalFile] = []

    def visit(folder: Path, parts: tuple[str, ...], ancestors: frozenset[Path]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            entry_path = Path(entry.path)
            real = entry_path.resolve()
            if entry.is_symlink() and (not real.exists() or not _inside(real, real_root)):
                continue
            if entry.is_dir(follow_symlinks=True):
                if real in ancestors:  # a symlink loop
                    continue
                visit(entry_path, (*parts, entry.name), ancestors | {real})
            elif entry.is_file(follow_symlinks=True):
                size = entry.stat(follow_symlinks=True).st_size
                found.append(LocalFile("/".join((*parts, entry.name)), entry_path, size))

    visit(root, (), frozenset({real_root}))
    return sorted(found, key=lambda f: f.path)


def sha256_file(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = c.HASH_CHUNK_SIZE,
    on_bytes: Callable[[int], object] | None = None,
) -> str:
    """Hex sha256 of a file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def infer_kind(paths: Iterable[str]) -> str:
    """``adapter``, ``model`` or ``dataset`` from the files' names.

    ``adapter_config.json`` at the top -> adapter; ``config.json`` at the top plus
    ``*.safetensors`` -> model; any ``*.jsonl`` -> dataset.
    """
    paths = list(paths)
    top = {p for p in paths if "/" not in p}
    lowered = [p.lower() for p in paths]
    if ADAPTER_CONFIG in top:
        return "adapter"
    if MODEL_CONFIG in top and any(p.endswith(".safetensors") for p in lowered):
        return "model"
    if any(p.endswith(".jsonl") for p in lowered):
        return "dataset"
    shown = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
    raise ValidationError(
        f"cannot tell the kind of repository from these files ({shown or 'none'}): "
        "expected adapter_config.json (adapter), config.json with *.safetensors (model) "
        "or *.jsonl (dataset); pass kind='adapter', 'model' or 'dataset' "
        "(--kind on the command line)"
    )
