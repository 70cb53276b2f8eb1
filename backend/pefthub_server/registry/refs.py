"""References: ``namespace/name[@revision]`` and the revision forms a version is found by."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pefthub_server.core.errors import ValidationFailed

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
LATEST = "latest"

REF_FORMS = "`namespace/name`, `namespace/name@3`, `namespace/name@prod` or `namespace/name@sha256:<64 hex>`"


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    revision: str = LATEST

    @property
    def repo(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}"


def parse_ref(value: str, *, field: str = "reference") -> Ref:
    if not isinstance(value, str) or "/" not in value:
        raise ValidationFailed(f"{field} {value!r} is not a reference; use {REF_FORMS}.", code="invalid_reference")
    repo, at, revision = value.partition("@")
    namespace, _, name = repo.partition("/")
    if not NAMESPACE_RE.match(namespace) or not NAME_RE.match(name) or (at and not revision):
        raise ValidationFailed(f"{field} {value!r} is not a reference; use {REF_FORMS}.", code="invalid_reference")
    revision = revision or LATEST
    check_revision(revision)
    return Ref(namespace, name, revision)


def check_revision(revision: str) -> str:
    if revision.isdigit() or DIGEST_RE.match(revision) or ALIAS_RE.match(revision):
        return revision
    raise ValidationFailed(
        f"Revision {revision!r} is not a version number, an alias or `sha256:<64 hex>`.", code="invalid_reference"
    )


def check_alias_name(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise ValidationFailed(
            f"Alias {alias!r} is invalid: it must start with a letter and hold only letters, digits, `.`, `_`, `-` "
            "(at most 64 characters).",
            code="validation_error",
        )
    return alias
