"""References, ``namespace/name[@revision]``, and the names inside them: one grammar for every part.

- namespace: 1 to 64 letters, digits, ``-`` and ``_``; starts and ends with a letter or a digit;
  no ``--``.
- name: 1 to 96 letters, digits, ``.``, ``-`` and ``_``; starts and ends with a letter or a
  digit; no ``--`` or ``..``; does not end in ``.git``. (So every hub repository is also a
  valid Hugging Face repo id, and ``/hf`` serves it.)
- revision: a version number (``3``: ASCII digits, 1 to 999,999,999, no leading zeros), an
  alias (``prod``; ``latest``, the newest version, is the default) or a digest
  (``sha256:<64 hex>``, any case, kept lowercase).
- alias: starts with a letter; 1 to 64 letters, digits, ``.``, ``_`` and ``-``.

The SDK, the CLI, the REST paths and ``/hf`` all check names with these functions, so one
string gets one answer everywhere.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from .errors import RefError
from .limits import ALIAS_MAX_LENGTH, NAME_MAX_LENGTH, NAMESPACE_MAX_LENGTH, VERSION_MAX_DIGITS
from .words import with_article

LATEST = "latest"
DIGEST_PREFIX = "sha256:"
FORMS = (
    "namespace/name, namespace/name@3 (a version number), "
    "namespace/name@prod (an alias; @latest is the default) or "
    "namespace/name@sha256:<64 hex digits> (a digest)"
)

_NAMESPACE_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITS = re.compile(r"[0-9]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX64_ANY_CASE = re.compile(r"[0-9a-fA-F]{64}")


# --- names ---------------------------------------------------------------------------------------


def _size_problem(value: str, what: str, limit: int) -> str | None:
    if not value:
        return f"the {what} is empty"
    if len(value) > limit:
        return f"the {what} is {len(value)} characters long; the limit is {limit}"
    return None


def _name_rules(value: str, what: str, limit: int, chars: re.Pattern, allowed: str, runs: tuple[str, ...]) -> str | None:
    if why := _size_problem(value, what, limit):
        return why
    if not chars.fullmatch(value):
        return f"{with_article(what)} holds only {allowed}"
    if value[0] not in _ALNUM or value[-1] not in _ALNUM:
        return f"{with_article(what)} starts and ends with a letter or a digit"
    if any(run in value for run in runs):
        return f"{with_article(what)} may not hold {' or '.join(repr(run) for run in runs)}"
    return None


def namespace_problem(value: str) -> str | None:
    """Why ``value`` is not a namespace (a user or team name), or None when it is one."""
    return _name_rules(value, "namespace", NAMESPACE_MAX_LENGTH, _NAMESPACE_CHARS, "letters, digits, '-' and '_'", ("--",))


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a repository name, or None when it is one."""
    why = _name_rules(value, "repository name", NAME_MAX_LENGTH, _NAME_CHARS, "letters, digits, '.', '-' and '_'",
                      ("--", ".."))
    if why is None and value.lower().endswith(".git"):
        return "a repository name may not end in '.git'"
    return why


def alias_problem(value: str) -> str | None:
    """Why ``value`` is not an alias name, or None when it is one."""
    if why := _size_problem(value, "alias", ALIAS_MAX_LENGTH):
        return why
    if not _ALIAS.fullmatch(value):
        return "an alias starts with a letter and holds only letters, digits, '.', '_' and '-'"
    return None


def _checked(value: object, field: str, problem, code: str = "validation_error") -> str:
    if not isinstance(value, str):
        raise RefError(f"{field} must be a string, got {type(value).__name__}", field=field, code=code)
    why = problem(value)
    if why is not None:
        raise RefError(f"invalid {field} {_show(value)}: {why}", field=field, code=code)
    return value


def check_namespace(value: object, *, field: str = "namespace") -> str:
    return _checked(value, field, namespace_problem)


def check_name(value: object, *, field: str = "name") -> str:
    return _checked(value, field, name_problem)


def check_alias(value: object, *, field: str = "alias") -> str:
    return _checked(value, field, alias_problem)


# --- revisions -----------------------------------------------------------------------------------


def revision_problem(value: str) -> str | None:
    """Why ``value`` is not a revision, or None when it is one."""
    if not value:
        return "the revision is empty"
    if value[0] in "0123456789":
        if not _DIGITS.fullmatch(value):
            return "a version number holds only the digits 0-9"
        if value[0] == "0":
            return "version numbers start at 1 and are written without leading zeros"
        if len(value) > VERSION_MAX_DIGITS:
            return f"a version number has at most {VERSION_MAX_DIGITS} digits"
        return None
    if value[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
        if not _HEX64_ANY_CASE.fullmatch(value[len(DIGEST_PREFIX):]):
            return "a digest is 'sha256:' followed by 64 hex digits"
        return None
    if alias_problem(value) is not None:
        return ("the revision is neither a version number (1, 2, 3 ...), a digest (sha256:...) "
                f"nor an alias (a letter, then up to {ALIAS_MAX_LENGTH - 1} letters, digits, '.', '_' or '-')")
    return None


def check_revision(value: object, *, field: str = "revision") -> str:
    """``value`` in its canonical form (a digest in lowercase); :class:`RefError` if it is no revision."""
    checked = _checked(value, field, revision_problem, RefError.code)
    return checked.lower() if is_digest(checked) else checked


def is_number(revision: str) -> bool:
    return bool(revision) and revision[0] in "0123456789" and revision_problem(revision) is None


def is_digest(revision: str) -> bool:
    return revision[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX


def is_sha256(value: object) -> bool:
    """64 lowercase hex digits: a blob's or a manifest's hash as every part writes it."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


# --- references ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    revision: str = LATEST
    #: whether the string named a revision (``acme/bot@latest``) or not (``acme/bot``)
    explicit: bool = False

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_number(self) -> bool:
        return is_number(self.revision)

    @property
    def number(self) -> int | None:
        return int(self.revision) if self.is_number else None

    @property
    def is_digest(self) -> bool:
        return is_digest(self.revision)

    @property
    def digest_hex(self) -> str | None:
        return self.revision[len(DIGEST_PREFIX):] if self.is_digest else None

    def at(self, revision: str | int) -> Ref:
        """The same repository at another revision."""
        return replace(self, revision=check_revision(str(revision)), explicit=True)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.explicit else self.repo_id


def parse_ref(value: object, *, field: str = "reference", allow_revision: bool = True) -> Ref:
    """Parse ``namespace/name[@revision]`` (surrounding white space ignored); :class:`RefError` says why not."""
    if isinstance(value, Ref):
        ref = value
    else:
        if not isinstance(value, str):
            raise RefError(f"{field} must be a string, got {type(value).__name__}", field=field)
        text = value.strip()
        repo, at, revision = text.partition("@")
        namespace, slash, name = repo.partition("/")
        why = (
            ("it has no '/' between namespace and name" if not slash else None)
            or namespace_problem(namespace)
            or name_problem(name)
            or (revision_problem(revision) if at else None)
        )
        if why is not None:
            raise RefError(f"invalid {field} {value!r}: {why}. Use {FORMS}", field=field)
        ref = Ref(namespace, name, revision.lower() if is_digest(revision) else (revision or LATEST), explicit=bool(at))
    if not allow_revision and ref.explicit:
        raise RefError(f"{field} {str(ref)!r} names a version, but this takes a repository: "
                       f"use {ref.repo_id} without @{ref.revision}", field=field)
    return ref


# --- Hugging Face revisions ----------------------------------------------------------------------

#: a version's Hugging Face commit id is the first 40 hex digits of its digest
HF_COMMIT_LENGTH = 40
#: how many leading hex digits a variant commit shares with its version's digest
HF_VARIANT_PREFIX = 24
HF_MAIN = "main"
_HF_COMMIT = re.compile(r"[0-9a-f]{40}")


def hf_commit(digest_hex: str, variant: str | None = None) -> str:
    """The commit id Hugging Face tools see for a version; ``variant`` names a derived view of it.

    A variant (an adapter config adjusted for an older peft) keeps the version's first 24 hex
    digits, so the server finds the version by an indexed prefix, and ends in 16 of its own.
    """
    if variant is None:
        return digest_hex[:HF_COMMIT_LENGTH]
    own = hashlib.sha256(f"{digest_hex}+{variant}".encode()).hexdigest()
    return digest_hex[:HF_VARIANT_PREFIX] + own[: HF_COMMIT_LENGTH - HF_VARIANT_PREFIX]



def is_hf_commit(value: str) -> bool:
    return _HF_COMMIT.fullmatch(value) is not None


def hf_revision(ref: Ref | str) -> str:
    """The Hugging Face revision naming what ``ref`` names: ``main``, an alias, a number or a commit."""
    r = parse_ref(ref)
    if r.is_digest:
        return hf_commit(r.digest_hex or "")
    return HF_MAIN if r.revision == LATEST else r.revision


def _show(value: str, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
