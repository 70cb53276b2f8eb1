"""Helpers the ``pefthub`` command's modules share: the usage error, tables, JSON,
shell exports."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _config
from . import constants as c
from .client import Hub

#: what a command that needs a token says when it has none, or a bad one
LOGIN_HINT = f"run `pefthub login` or set {c.ENV_TOKEN}"


class UsageError(Exception):
    """Bad arguments: the command exits 2."""


class NoToken(Exception):
    """The command needs a token and none is set: it exits 1 before any request."""


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
    # A command run by hand: a hub that refuses its first connection is not there (say so at
    # once, not after ~10 s of retries); once it has answered, a refusal is a restart, retried.
    return Hub(retry_unreached=False)


def credentials() -> tuple[str, str | None, str | None]:
    """``(url, token, other)`` as :class:`Hub` resolves them; ``other`` is the URL of a saved login
    whose token is not sent because the hub chosen is another one (else None)."""
    config = _config.read_config()
    url = _config.resolve_url(None, config)
    token = _config.resolve_token(None, url, config)
    saved = config.get("url")
    other = str(saved) if not token and config.get("token") and saved else None
    return url, token, other


def no_token_message(command: str) -> str:
    """``pefthub push`` needs a token: run `pefthub login` or set PEFTHUB_TOKEN (and why a saved one is not used)."""
    url, _, other = credentials()
    why = f" (the token `pefthub login` saved is for {other}, not {url})" if other else ""
    return f"`{command}` needs a token: {LOGIN_HINT}{why}."


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
