"""Helpers the ``pefthub`` command's modules share: the usage error, tables, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .client import Hub


class UsageError(Exception):
    """Bad arguments: the command exits 2."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    )


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def make_hub() -> Hub:
    return Hub()
