"""Helpers the ``pefthub`` command's modules share: the usage error, tables, JSON,
shell exports."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
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


def labelled(rows: Sequence[tuple[str, Any]], *, width: int = 9) -> list[str]:
    """``label  value`` lines with the labels padded to ``width``; rows whose value is empty are left out."""
    return [f"{label:<{width}} {value}" for label, value in rows if value not in (None, "", [], {})]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def show(as_json: bool, raw: Any, text: Callable[[], str]) -> int:
    """Print ``raw`` as JSON (``--json``) or the human ``text()``; the command's exit status, 0."""
    if as_json:
        print_json(raw)
    else:
        print(text())
    return 0


def make_hub() -> Hub:
    return Hub()


SHELLS = ("sh", "fish", "powershell", "json")


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shell_exports(env: Mapping[str, str | None], shell: str) -> str:
    """``env`` as the lines that set it in ``shell``; a ``None`` value unsets the variable."""
    if shell == "json":
        return json.dumps(dict(env), indent=2)
    lines = []
    for name, value in env.items():
        if shell == "sh":
            lines.append(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
        elif shell == "fish":
            lines.append(f"set -e {name}" if value is None else f"set -gx {name} {_fish_quote(value)}")
        elif shell == "powershell":
            quoted = "'" + (value or "").replace("'", "''") + "'"
            lines.append(
                f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" if value is None else f"$Env:{name} = {quoted}"
            )
        else:
            raise UsageError(f"unknown shell {shell!r}: use one of {', '.join(SHELLS)}")
    return "\n".join(lines)
