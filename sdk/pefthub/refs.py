"""References as the SDK takes them: the protocol's grammar (:mod:`pefthub.protocol.refs`), errors as :class:`RefError`.

A revision is a version number (``@3``), an alias (``@prod``; ``latest`` is the
default) or a content digest (``@sha256:<64 hex>``).
"""

from __future__ import annotations

from .errors import RefError, translated
from .protocol import refs as _grammar
from .protocol.refs import LATEST, Ref

__all__ = ["LATEST", "Ref", "RefError", "check_alias", "parse_ref"]


def parse_ref(value: str | Ref, *, allow_revision: bool = True) -> Ref:
    """Parse a reference string; raise :class:`RefError` saying what is accepted."""
    with translated(RefError):
        return _grammar.parse_ref(value, allow_revision=allow_revision)


def check_alias(alias: str) -> str:
    """Validate an alias name locally so a typo fails before any request."""
    with translated(RefError):
        return _grammar.check_alias(alias)
