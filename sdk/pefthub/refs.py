"""Parse ``namespace/name[@revision]`` references.

A revision is a version number (``@3``), an alias (``@prod``; ``latest`` is the
default) or a content digest (``@sha256:<64 hex>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RefError

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_ALIAS = r"[A-Za-z][A-Za-z0-9._-]{0,63}"
_NUMBER = r"[1-9][0-9]{0,17}"
_DIGEST = r"sha256:[0-9a-fA-F]{64}"

_REF_RE = re.compile(
    rf"(?P<namespace>{_NAME})/(?P<name>{_NAME})(?:@(?P<revision>{_NUMBER}|{_DIGEST}|{_ALIAS}))?"
)
_ALIAS_RE = re.compile(_ALIAS)

ACCEPTED_FORMS = (
    "namespace/name, namespace/name@3 (a version number), "
    "namespace/name@prod (an alias; @latest is the default) or "
    "namespace/name@sha256:<64 hex digits> (a digest)"
)

DEFAULT_REVISION = "latest"


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    revision: str = DEFAULT_REVISION
    #: whether the string named a revision (``acme/bot@latest``) or not (``acme/bot``)
    explicit: bool = False

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_digest(self) -> bool:
        return self.revision.startswith("sha256:")

    @property
    def is_number(self) -> bool:
        return self.revision.isdigit()

    @property
    def digest_hex(self) -> str | None:
        return self.revision.split(":", 1)[1] if self.is_digest else None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.explicit else self.repo_id


def parse_ref(value: str | Ref, *, allow_revision: bool = True) -> Ref:
    """Parse a reference string; raise :class:`RefError` saying what is accepted."""
    if isinstance(value, Ref):
        ref = value
    else:
        if not isinstance(value, str):
            raise RefError(f"a reference must be a string, got {type(value).__name__}")
        match = _REF_RE.fullmatch(value.strip())
        if not match:
            raise RefError(f"invalid reference {value!r}: use {ACCEPTED_FORMS}")
        revision = match["revision"]
        if revision and revision.lower().startswith("sha256:"):
            revision = revision.lower()
        elif revision and revision.isdigit():
            revision = str(int(revision))
        ref = Ref(
            match["namespace"],
            match["name"],
            revision or DEFAULT_REVISION,
            explicit=revision is not None,
        )
    if not allow_revision and ref.explicit:
        raise RefError(
            f"{value!s} names a version, but this takes a repository: "
            f"use {ref.repo_id} without @{ref.revision}"
        )
    return ref


def check_alias(alias: str) -> str:
    """Validate an alias name locally so a typo fails before any request."""
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias) or alias.isdigit():
        raise RefError(
            f"invalid alias {alias!r}: an alias starts with a letter and holds letters, "
            "digits, '.', '_' or '-' (at most 64 characters)"
        )
    return alias
