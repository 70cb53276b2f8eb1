"""HTTP helpers shared by the API and the /hf views: absolute URLs, byte ranges, file slices."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from pefthub_server.core.errors import HubError

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1024 * 1024


def base_url(request) -> str:
    """Where clients reach this hub: PEFTHUB_PUBLIC_URL, else the request's own host."""
    return settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range, or None for the whole file; 416 if outside it."""
    match = _RANGE_RE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        start, end = max(size - length, 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(f"Range {header!r} is outside the file's {size} bytes.", code="range_not_satisfiable", status=416)
    return start, end


def file_slice(path: Path, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, in 1 MiB chunks."""
    with open(path, "rb") as fh:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
