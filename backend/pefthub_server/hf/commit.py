"""A Hugging Face commit (``POST /api/{type}s/{ns}/{name}/commit/{rev}``) as a hub version.

huggingface_hub sends NDJSON: a ``header`` line (summary, description, parentCommit), then
``file`` (inline base64 content), ``lfsFile`` (a blob sent through the LFS batch API),
``deletedFile`` and ``deletedFolder`` lines. A commit is a *delta* on the revision's head:
files it does not name are kept. :func:`parse_commit` bounds and reads the body;
:func:`manifest` applies it to the head's files, giving the full manifest that
``push.version_create`` checks and commits like any push (pickle refused, headers read,
an adapter checked against its base).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from pefthub.protocol.limits import MAX_FILES, MAX_MESSAGE_LENGTH
from pefthub.protocol.manifest import check_path
from pefthub.protocol.refs import is_sha256
from pefthub_server.core import parsers
from pefthub_server.core.errors import ValidationFailed
from pefthub_server.hf.views import HfError
from pefthub_server.registry import acceptance
from pefthub_server.registry.models import Version, VersionFile

#: the longest line a commit may hold: one inline file, base64, as huggingface_hub writes it.
#: preupload sends only small files inline (``hf.write.REGULAR_MAX``); the body as a whole is
#: bounded by PEFTHUB_MAX_REQUEST_BODY before it is read
MAX_LINE = 12 * 1024 * 1024
#: a header, one line per file of a version, and as many deletions
MAX_LINES = 2 * MAX_FILES + 1
KEYS = ("header", "file", "lfsFile", "deletedFile", "deletedFolder")


@dataclass
class Commit:
    summary: str = ""
    description: str = ""
    parent: str | None = None
    inline: dict[str, bytes] = field(default_factory=dict)  # path -> content
    lfs: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # path -> (sha256, size or None)
    deleted_files: list[str] = field(default_factory=list)
    deleted_folders: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return "\n\n".join(part for part in (self.summary.strip(), self.description.strip()) if part)

    def added(self) -> list[str]:
        return [*self.inline, *self.lfs]


def _bad(message: str) -> ValidationFailed:
    return ValidationFailed(f"Commit body: {message}", code="invalid_commit")


def _text(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_MESSAGE_LENGTH:
        raise _bad(f"`{what}` must be a string of at most {MAX_MESSAGE_LENGTH} characters.")
    return value


def parse_commit(body: bytes) -> Commit:
    """The commit in an NDJSON body, every line bounded before it is parsed and every path checked."""
    if body.count(b"\n") > MAX_LINES:
        raise ValidationFailed(f"Commit body: more than {MAX_LINES} lines; a version holds at most {MAX_FILES} files.",
                               code="too_large", status=413)
    commit, seen = Commit(), set()
    for number, raw in enumerate(body.splitlines(), 1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE:
            raise ValidationFailed(f"Commit body: line {number} is over {MAX_LINE} bytes; send large files through "
                                   "the LFS batch API (huggingface_hub does when preupload says `lfs`).",
                                   code="too_large", status=413)
        try:
            line = parsers.loads(raw)
        except parsers.JSONProblem as exc:
            raise _bad(f"line {number} is not JSON: {exc.message}.") from None
        if not isinstance(line, dict) or line.get("key") not in KEYS or not isinstance(line.get("value"), dict):
            key = line.get("key") if isinstance(line, dict) else None
            raise _bad(f"line {number} has key {key!r}; PEFT Hub takes {', '.join(KEYS)} "
                       "(copy a file by committing its content or its LFS oid).")
        key, value = line["key"], line["value"]
        if key == "header":
            if number != 1:
                raise _bad("the `header` line must come first, once.")
            commit.summary = _text(value.get("summary"), "summary")
            commit.description = _text(value.get("description"), "description")
            parent = value.get("parentCommit")
            commit.parent = None if parent is None else _text(parent, "parentCommit")
            continue
        if number == 1:
            raise _bad("the first line must be the `header`.")
        path = value.get("path")
        if key == "deletedFolder" and isinstance(path, str):
            path = path.rstrip("/")
        path = check_path(path, field=f"line {number}: path")
        if path in seen:
            raise _bad(f"`{path}` is named twice.")
        seen.add(path)
        if key == "file":
            commit.inline[path] = _content(value, path)
        elif key == "lfsFile":
            commit.lfs[path] = _lfs(value, path)
        elif key == "deletedFile":
            commit.deleted_files.append(path)
        else:
            commit.deleted_folders.append(path)
    if not body.strip():
        raise _bad("it is empty; the first line must be the `header`.")
    return commit


def _content(value: dict, path: str) -> bytes:
    acceptance.check_file_type(path)  # a pickle is refused before its bytes are decoded, let alone stored
    encoding, content = value.get("encoding", "utf-8"), value.get("content")
    if not isinstance(content, str):
        raise _bad(f"`{path}`: `content` must be a string.")
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"`{path}`: `content` is not valid base64.") from None
    if encoding in ("utf-8", "utf8"):
        return content.encode()
    raise _bad(f"`{path}`: encoding {encoding!r} is not base64 or utf-8.")


def _lfs(value: dict, path: str) -> tuple[str, int | None]:
    acceptance.check_file_type(path)
    oid, size, algo = value.get("oid"), value.get("size"), value.get("algo", "sha256")
    if algo != "sha256" or not is_sha256(oid):
        raise _bad(f"`{path}`: an lfsFile needs algo `sha256` and `oid`, 64 lowercase hex digits.")
    if size is not None and (type(size) is not int or size < 0):
        raise _bad(f"`{path}`: `size` must be a non-negative integer.")
    return oid, size


def _folders(path: str) -> list[str]:
    """The folders ``path`` lies in, outermost first: ``a/b/c.md`` -> ``a``, ``a/b``."""
    parts = path.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


def manifest(commit: Commit, head: Version | None, *, sizes: dict[str, int]) -> list[dict]:
    """The files of the version this commit makes: ``head``'s, less the deleted, plus the added.

    ``sizes`` gives the size of the LFS blobs a line names without one (those the caller
    possesses); the inline files are hashed here. A deletion naming nothing is a 404 as on the Hub.
    Each file is looked at once per folder it lies in, never once per line of the commit.
    """
    files = {f.path: {"path": f.path, "sha256": f.blob_id, "size": f.size}
             for f in (VersionFile.objects.filter(version=head) if head is not None else ())}
    for path in commit.deleted_files:
        if files.pop(path, None) is None:
            raise HfError(404, "EntryNotFound", f"A file with this name doesn't exist: `{path}` is not in the "
                          "revision this commit changes.")
    if commit.deleted_folders:
        gone, emptied = set(commit.deleted_folders), set()
        for path in list(files):
            if hits := gone.intersection(_folders(path)):
                emptied |= hits
                del files[path]
        for folder in commit.deleted_folders:
            if folder not in emptied:
                raise HfError(404, "EntryNotFound", f"A file with this name doesn't exist: no file is under "
                              f"`{folder}/` in the revision this commit changes.")
    for path, data in commit.inline.items():
        files[path] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for path, (oid, size) in commit.lfs.items():
        known = sizes.get(oid)
        if size is None and known is None:
            raise ValidationFailed(f"`{path}`: blob {oid} is neither in a version you can read nor uploaded by you; "
                                   "upload it through the LFS batch API, then commit again.", code="missing_blob")
        files[path] = {"path": path, "sha256": oid, "size": size if size is not None else known}
    # A file added where the head had a folder (or the reverse) replaces it, as git does; both added
    # in this commit is left for the manifest check to refuse.
    added = set(commit.added())
    for path in list(files):
        if path not in added and not added.isdisjoint(_folders(path)):
            del files[path]
    for path in added:
        for folder in _folders(path):
            if folder not in added:
                files.pop(folder, None)
    return sorted(files.values(), key=lambda f: f["path"])
