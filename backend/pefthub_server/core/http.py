"""HTTP helpers for every view: where clients reach the hub, request bodies, and serving bytes.

:func:`bytes_response` is the one way the hub answers a download from its own disk or
memory: ``HEAD``, a whole ``GET``, or a single ``Range`` (206, or 416 outside the file),
for the API's blob URLs and the Hugging Face ``resolve`` route alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponse, StreamingHttpResponse

from pefthub_server.core import metrics
from pefthub_server.core.errors import HubError, ValidationFailed

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1024 * 1024
_PAST_ANY_FILE = 10**18


def base_url(request) -> str:
    """Where clients reach this hub: PEFTHUB_PUBLIC_URL, else the request's own host."""
    return settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")


def choice_param(request, name: str, values) -> str | None:
    """A query filter that must be one of ``values`` (None when absent); a 400 naming the choices otherwise.

    An unknown value is a typo to point out, not a filter that silently matches nothing.
    """
    value = request.query_params.get(name)
    if value and value not in values:
        raise ValidationFailed(f"`{name}={value[:64]}` is not one of {', '.join(values)}.", detail={"field": name})
    return value or None


def validated(serializer_class, data: Any) -> dict:
    """A request body checked by ``serializer_class``; a 400 naming each bad field otherwise."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _position(digits: str) -> int:
    """A byte position as written in a Range header; any number past every file is the same one.

    Python's ``int`` refuses a string of more than 4,300 digits, and no file reaches 10**18 bytes.
    """
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _PAST_ANY_FILE


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range, or None for the whole file; 416 if outside it.

    As RFC 9110 14.1.2 reads: a last position past the end means the end, and a suffix longer
    than the file the whole file, however many digits they have.
    """
    match = _RANGE_RE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = _position(last)
        start, end = max(size - length, 0), size - 1
    else:
        start = _position(first)
        end = min(_position(last), size - 1) if last else size - 1
    if start >= size or start > end:
        shown = header if len(header) <= 80 else header[:79] + "…"
        raise HubError(f"Range {shown!r} is outside the file's {size} bytes.", code="range_not_satisfiable", status=416)
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


def bytes_response(request, *, size: int, headers: dict[str, str], path: Path | None = None,
                   content: bytes | None = None, content_type: str = "application/octet-stream") -> HttpResponse:
    """Serve ``size`` bytes, from the file at ``path`` or from ``content``, honouring HEAD and one Range."""
    byte_range = parse_range(request.headers.get("Range", ""), size)
    if request.method == "HEAD":
        response = HttpResponse(content_type=content_type)
        response["Content-Length"] = str(size)
    else:
        start, end = byte_range or (0, size - 1)
        status = 206 if byte_range else 200
        if content is not None:
            response = HttpResponse(content[start : end + 1], status=status, content_type=content_type)
        elif byte_range is None:
            response = FileResponse(path.open("rb"), content_type=content_type)
        else:
            response = StreamingHttpResponse(file_slice(path, start, end - start + 1), status=206,
                                             content_type=content_type)
        if byte_range:
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1) if size else "0"
        metrics.PULL_BYTES.inc(end - start + 1 if size else 0)
    for name, value in headers.items():  # after FileResponse, which would name the file by its blob path
        response[name] = value
    return response
