"""Untrusted JSON in bounded time and memory: the API's request bodies, and the configs a push holds.

Python's ``json`` recurses once per nesting level (deep input is a ``RecursionError``) and
builds every value, and a database cannot store every string JSON can hold (PostgreSQL
refuses U+0000; no UTF-8 column takes a lone surrogate). So a document is read in steps:
its size is capped by the caller before it is read; its nesting depth is counted on the
raw bytes (:func:`too_deep`) before it is parsed; after parsing, the first string a database
cannot store is found and named by where it is (:func:`unstorable`).

:class:`JSONParser` is DRF's parser for every API view: it reads at most
``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes of a body and answers each of these with a 4xx.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers

from pefthub.protocol.limits import MAX_JSON_DEPTH, MAX_REQUEST_CONTAINERS
from pefthub_server.core.errors import ValidationFailed

_BOM = b"\xef\xbb\xbf"
# What the depth count keeps of a document: quotes (to know what is inside a string) and
# brackets, braces written as brackets (depth does not care which; the parser does).
_NOT_KEPT = bytes(b for b in range(256) if b not in b'"[]{}')
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_OPEN_RUN = re.compile(rb"\[{%d}" % (MAX_JSON_DEPTH + 1))
# small enough that a chunk's pieces between quotes (a list, and bytes.join's 80-byte buffer
# per piece) stay a few megabytes
_SCAN_CHUNK = 64 * 1024
# \u0000 or a surrogate escape; a lone one decodes to a string no database stores. Escaped
# backslashes before it (`\\u0000` is text) make a false alarm, which the walk clears.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89abcdefABCDEF])")


class JSONProblem(ValueError):
    """Why bytes are not JSON the hub takes; ``field`` says where (``a.b[1]``), when it is one value."""

    def __init__(self, message: str, *, field: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail


def _brackets(data: bytes) -> bytes:
    """The brackets and braces of JSON ``data`` that are not inside a string, as ``[`` and ``]``; 64 KiB at a time.

    Per chunk: escaped backslashes, then escaped quotes go (escapes read left to right, and a
    chunk never ends inside one), everything but quotes and brackets goes, and the pieces
    between quotes alternate outside and inside a string. Memory stays near the output's size.
    """
    out = bytearray()
    inside, carry = False, b""
    for start in range(0, len(data), _SCAN_CHUNK):
        chunk = carry + data[start:start + _SCAN_CHUNK]
        carry = b""
        if (len(chunk) - len(chunk.rstrip(b"\\"))) % 2:  # ends inside an escape: finish it next time
            chunk, carry = chunk[:-1], b"\\"
        pieces = chunk.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_AS_BRACKETS, _NOT_KEPT).split(b'"')
        out += b"".join(pieces[inside::2])
        inside ^= len(pieces) % 2 == 0
    return bytes(out)


def too_deep(data: bytes) -> bool:
    """Whether ``data`` nests objects and arrays more than ``MAX_JSON_DEPTH`` deep, counted without parsing.

    Of the brackets outside strings, each pass removes every innermost ``[]`` (one scan, so
    one level): the passes it takes to empty them are the depth (a run of more opening
    brackets than the limit is too deep at once). Unbalanced brackets stop the count; the parser then says what is wrong.
    Every step is a C-speed scan, and at most ``MAX_JSON_DEPTH`` + 1 passes run.
    """
    brackets = _brackets(data)
    for _ in range(MAX_JSON_DEPTH):
        if _OPEN_RUN.search(brackets):
            return True
        shorter = brackets.replace(b"[]", b"")
        if not shorter or len(shorter) == len(brackets):
            return False
        brackets = shorter
    return brackets.replace(b"[]", b"") != brackets


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def precheck(data: bytes) -> None:
    """What is checked on the raw bytes before any parser runs: no byte-order mark, nesting at most ``MAX_JSON_DEPTH``.

    JSON is UTF-8 without a byte-order mark (RFC 8259), and json.load, transformers and
    tokenizers refuse one.
    """
    if data.startswith(_BOM):
        raise JSONProblem("it starts with a UTF-8 byte-order mark, which json.load, transformers and tokenizers "
                          "refuse; save it without one")
    if too_deep(data):
        raise JSONProblem(f"it is nested more than {MAX_JSON_DEPTH} levels deep", limit=MAX_JSON_DEPTH)


def loads(data: bytes) -> Any:
    """Parse untrusted JSON bytes; :class:`JSONProblem` says why they are not taken.

    Refused: a byte-order mark, bytes that are not UTF-8, nesting deeper than
    ``MAX_JSON_DEPTH``, NaN, Infinity and numbers out of a float's range, and strings (keys
    included) that hold U+0000 or a lone surrogate.
    """
    precheck(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"it is not UTF-8 (byte {exc.start})", byte=exc.start) from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"{exc.msg} at line {exc.lineno}, column {exc.colno}", line=exc.lineno,
                          column=exc.colno) from None
    except ValueError as exc:
        raise JSONProblem(str(exc)) from None
    if _UNSTORABLE_ESCAPE.search(data) and (found := unstorable(value)):
        where, char = found
        raise JSONProblem(f"`{where or '(the whole value)'}` holds {char}, which a database cannot store; remove it",
                          field=where)
    return value


def unstorable_char(text: str) -> str | None:
    """The first character of ``text`` a database cannot store (``U+0000 (NULL)``, a lone surrogate), or None."""
    char = "\x00" if "\x00" in text else next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    if char is None:
        return None
    return f"U+{ord(char):04X} ({'NULL' if char == chr(0) else 'a lone surrogate'})"


def unstorable(value: Any) -> tuple[str, str] | None:
    """``(where, which character)`` of the first string (or key) in ``value`` a database cannot store.

    ``where`` is a dotted path with list indexes (``metadata.tags[2]``); a bad key is
    reported at the object that holds it. Walks iteratively: no recursion, whatever the depth.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if char := unstorable_char(item):
                return where, char
        elif isinstance(item, dict):
            for key in item:
                if char := unstorable_char(key):
                    escaped = key.encode("unicode_escape").decode()
                    return (f"{where}.{escaped}" if where else escaped), char
            stack.extend((f"{where}.{key}" if where else key, v) for key, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, bounded: at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes read, then :func:`loads`.

    A body over the limit raises Django's ``RequestDataTooBig`` (the 413 the error handler
    writes for any body too big); anything :func:`loads` refuses is a 400 saying why.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        data = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise RequestDataTooBig(f"The request body is larger than {limit} bytes.")
        # Parsed, every `[]` costs ~60 bytes: 16 MiB of them would be ~400 MB. Brackets inside
        # strings count too (an upper bound, counted at C speed); no real body comes close.
        if data.count(b"[") + data.count(b"{") > MAX_REQUEST_CONTAINERS:
            raise ValidationFailed(f"Request body holds more than {MAX_REQUEST_CONTAINERS} arrays and objects; "
                                   "send fewer items per request.", code="too_large", status=413,
                                   detail={"limit": MAX_REQUEST_CONTAINERS})
        try:
            return loads(data)
        except JSONProblem as exc:
            if exc.field is not None:
                raise ValidationFailed(f"Request body: {exc.message}.", detail={"field": exc.field}) from None
            raise ValidationFailed(f"Request body is not valid JSON: {exc.message}.", code="invalid_json",
                                   detail=exc.detail or None) from None
