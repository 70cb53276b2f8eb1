"""What breaking the contract raises: one base class, a stable ``code``, the bad ``field``.

Protocol errors are plain ``ValueError``s: each side renders them its own way (the
server as a 400 with ``code``, ``message`` and ``detail``; the SDK as its typed
:class:`pefthub.ValidationError`). Messages name the bad value and say how to fix it.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(ValueError):
    """Input that breaks the shared contract; ``field`` is the dotted name of the bad input."""

    code = "validation_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.detail = detail if detail is not None else ({"field": field} if field else None)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r}, code={self.code!r})"


class RefError(ProtocolError):
    """A name, revision or ``namespace/name[@revision]`` string outside the grammar.

    Code ``invalid_reference`` for references and revisions, ``validation_error`` for a
    namespace, name or alias given on its own.
    """

    code = "invalid_reference"


class PathError(ProtocolError):
    """A file path that could escape or clobber a folder."""

    code = "invalid_path"


class SpecError(ProtocolError):
    """A job spec is invalid: ``field`` is the dotted path (``hyperparameters.r``), ``message`` says why."""

    code = "invalid_spec"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)

    def __repr__(self) -> str:
        return f"SpecError(field={self.field!r}, message={self.message!r})"


class HeaderError(ProtocolError):
    """A safetensors file whose header is malformed or out of bounds."""

    code = "invalid_safetensors"
