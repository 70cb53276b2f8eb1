"""Push, step by step: hash local files, send the missing blobs.

The negotiation and the commit are plain API calls made by :class:`pefthub.Hub`;
this module holds the parts that touch file bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from . import constants as c
from ._files import LocalFile, sha256_file
from ._http import HTTPClient
from .errors import HubError, ValidationError


def hash_files(
    files: list[LocalFile], on_bytes: Callable[[int], object]
) -> tuple[list[dict[str, Any]], dict[str, LocalFile]]:
    """The manifest to send, and the local file holding each sha256."""
    manifest: list[dict[str, Any]] = []
    by_sha: dict[str, LocalFile] = {}
    for f in files:
        sha = sha256_file(f.abspath, on_bytes=on_bytes)
        manifest.append({"path": f.path, "sha256": sha, "size": f.size})
        by_sha.setdefault(sha, f)
    return manifest, by_sha


class _FileBody:
    """Exactly ``size`` bytes of a file, read as they are sent.

    ``__len__`` lets requests set ``Content-Length`` (presigned S3 PUTs refuse
    chunked bodies); ``read`` lets urllib3 stream it block by block.
    """

    def __init__(self, path: os.PathLike[str] | str, size: int, on_bytes: Callable[[int], object]):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close(), which requests calls
        self._size = size
        self._left = size
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        return self._size

    def read(self, n: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        chunk = self._fh.read(n)
        self._left -= len(chunk)
        self._on_bytes(len(chunk))
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(c.UPLOAD_CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self._fh.close()


def upload_blob(
    http: HTTPClient,
    local: LocalFile,
    upload: Mapping[str, Any],
    on_bytes: Callable[[int], object],
) -> None:
    """Send one blob where the server said, with exactly its headers and no token."""
    try:
        method = str(upload.get("method") or "PUT").upper()
        url = http.absolute(str(upload["url"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise HubError(f"the server gave no usable upload target for {local.path!r}") from exc
    headers = {str(k): str(v) for k, v in (upload.get("headers") or {}).items()}

    try:
        size_now = os.stat(local.abspath).st_size
    except OSError as exc:
        raise ValidationError(f"{local.abspath}: cannot read it any more ({exc})") from exc
    if size_now != local.size:
        raise ValidationError(
            f"{local.abspath} changed while pushing ({local.size} bytes when hashed, "
            f"{size_now} now); push again"
        )

    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        on_bytes(n)

    def body() -> _FileBody | bytes:
        # Each attempt (a retry included) starts from the first byte.
        count(-sent)
        if local.size == 0:
            return b""  # an empty iterable would make requests send it chunked
        return _FileBody(local.abspath, local.size, count)

    response = http.request(method, url, data=body, headers=headers)
    response.close()


def upload_missing(http: HTTPClient, plan: Any, by_sha: Mapping[str, LocalFile], *, what: str,
                   bar: Callable[[int, str], AbstractContextManager[Any]]) -> None:
    """Upload the blobs a negotiation's ``plan`` says are ``missing``, each where it says; ``what`` (a push, a
    checkpoint) names the upload when the server asks for a blob it does not hold."""
    missing = (plan or {}).get("missing") or []
    for item in missing:
        if item.get("sha256") not in by_sha:
            raise HubError(f"the server asked for a blob this {what} does not hold: {item.get('sha256')!r}")
    with bar(sum(by_sha[i["sha256"]].size for i in missing), "uploading") as progress:
        for item in missing:
            upload_blob(http, by_sha[item["sha256"]], item.get("upload") or {}, progress.update)
