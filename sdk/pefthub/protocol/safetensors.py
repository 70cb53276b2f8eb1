"""A strict, bounded reader of safetensors headers: names, dtypes, shapes and offsets, no tensor data.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of a
UTF-8 JSON object and the data section. The header is read through ``read_range``
(two calls: the length, then the header), so an S3 object costs two ranged GETs, and
bounds-checked as strictly as the safetensors library: the length is within
2..100 MiB and inside the file; every tensor has a known dtype, non-negative integer
dims and ``data_offsets`` whose span is exactly dtype size times shape; tensors neither overlap
nor leave holes, and together cover the whole data section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HeaderError
from .limits import MAX_SAFETENSORS_HEADER

#: bits per element, as the safetensors library defines its dtypes
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    #: byte offsets in the data section, ``[begin, end)``
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    tensors: dict[str, Tensor]
    metadata: dict[str, str] | None
    #: where the data section starts in the file: 8 + the header length
    data_start: int


def looks_like_safetensors(head: bytes) -> bool:
    """Whether the first bytes of a file start a safetensors header (a length, then ``{``)."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= MAX_SAFETENSORS_HEADER


def _show(value: str, limit: int = 160) -> str:
    text = repr(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in header")
    return result


def read_header(size: int, read_range: Callable[[int, int], bytes], *, path: str = "file") -> Header:
    """The bounds-checked header of a ``size``-byte file; :class:`HeaderError` names the first fault."""

    def bad(message: str, tensor: str | None = None) -> HeaderError:
        where = f" tensor `{_show(tensor)}`" if tensor is not None else ""
        return HeaderError(f"`{path}` is not a valid safetensors file:{where} {message}",
                           detail={"path": path, "tensor": tensor})

    if size < 8:
        raise bad(f"it is {size} bytes long, too short for the 8-byte header length")
    prefix = read_range(0, 8)
    if len(prefix) != 8:
        raise bad("the 8-byte header length could not be read")
    n = int.from_bytes(prefix, "little")
    if not 2 <= n <= MAX_SAFETENSORS_HEADER:
        raise bad(f"header length {n} is outside 2..{MAX_SAFETENSORS_HEADER}")
    if 8 + n > size:
        raise bad(f"header length {n} runs past the end of the {size}-byte file")
    raw = read_range(8, n)
    if len(raw) != n:
        raise bad(f"only {len(raw)} of the {n} header bytes could be read")
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("it does not start with '{'")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise bad(f"the header is not a UTF-8 JSON object ({_show(str(exc), 200)})") from None
    data_size = size - 8 - n
    metadata = None
    tensors: dict[str, Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise bad("`__metadata__` must map strings to strings")
            metadata = entry
            continue
        tensors[name] = _tensor(name, entry, data_size, bad)
    position = 0
    for name, tensor in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if tensor.begin < position:
            raise bad(f"starts at byte {tensor.begin}, overlapping the tensor before it (which ends at {position})", name)
        if tensor.begin > position:
            raise bad(f"starts at byte {tensor.begin} but the tensor before it ends at {position}: a hole in the data", name)
        position = tensor.end
    if position != data_size:
        raise bad(f"tensors cover {position} bytes but the data section holds {data_size}")
    return Header(tensors=tensors, metadata=metadata, data_start=8 + n)


def _tensor(name: str, entry: Any, data_size: int, bad: Callable[..., HeaderError]) -> Tensor:
    if not isinstance(entry, dict):
        raise bad("its entry is not an object", name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"has unknown dtype {_show(repr(dtype), 40)}; known: {', '.join(DTYPE_BITS)}", name)
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"has shape {_show(repr(shape), 80)}, not a list of non-negative integers", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise bad(f"has data_offsets {_show(repr(offsets), 80)}, not [begin, end] integers", name)
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"has data_offsets {offsets}; need 0 <= begin <= end", name)
    if end > data_size:
        raise bad(f"has data_offsets {offsets} past the end of the {data_size}-byte data section", name)
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise bad(f"is {dtype} × {shape} = {bits / 8:g} bytes but data_offsets {offsets} span {end - begin}", name)
    return Tensor(dtype, tuple(shape), begin, end)


def read_header_file(path: Path | str) -> Header:
    """:func:`read_header` of a local file."""
    path = Path(path)
    with path.open("rb") as fh:

        def read_range(start: int, length: int) -> bytes:
            fh.seek(start)
            return fh.read(length)

        return read_header(path.stat().st_size, read_range, path=path.name)
