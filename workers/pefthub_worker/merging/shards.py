"""The base's safetensors shards: their layout, their checked headers, and the streaming shard writer.

Headers are read with :func:`pefthub.protocol.safetensors.read_header_file`, the reader the
hub checks pushes with. A shard is rewritten tensor by tensor (read, merge in float32,
cast, append), so peak memory stays near the largest tensor: not ``safe_open`` +
``save_file``, which would hold the whole shard twice (its mapped pages and the merged copy).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pefthub.protocol.errors import HeaderError
from pefthub.protocol.safetensors import Header, read_header_file

from .plan import MergeError, read_json

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: float dtypes a base may hold: read as float32 where merged, written in the merge's dtype
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
#: integer dtypes (position ids, masks): copied byte for byte
INTEGER_DTYPES = ("BOOL", "I16", "U16", "I32", "U32", "I64", "U64")


@dataclass(frozen=True)
class Shard:
    """One safetensors file of the base and its checked header."""

    path: Path
    header: Header


def base_layout(base_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The base's shard file names in order and its index (None for a single ``model.safetensors``)."""
    if (base_dir / INDEX).is_file():
        index = read_json(base_dir / INDEX, f"base `{base_dir}`")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MergeError(f"base `{base_dir}`: {INDEX} has no weight_map of tensor names to shard files")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or name in (".", ".."):
                raise MergeError(f"base `{base_dir}`: {INDEX} names shard `{name}`, not a file beside it")
        return names, index
    if (base_dir / SINGLE).is_file():
        return [SINGLE], None
    found = ", ".join(sorted(p.name for p in base_dir.iterdir())) if base_dir.is_dir() else "no such folder"
    raise MergeError(f"base `{base_dir}` has no {SINGLE} or {INDEX} ({found}); "
                     "re-save it with save_pretrained(safe_serialization=True)")


def read_shard(base_dir: Path, name: str) -> Shard:
    """A shard's header, checked; quantized weights are refused."""
    path = base_dir / name
    if not path.is_file():
        raise MergeError(f"base `{base_dir}`: its {INDEX} lists `{name}` but there is no such file")
    try:
        header = read_header_file(path)
    except HeaderError as exc:
        raise MergeError(f"base `{base_dir}`: {exc}") from None
    for tensor_name, tensor in header.tensors.items():
        # anything else is quantized: U8/I8 packed 4/8-bit, F8, F4 ...
        if tensor.dtype not in FLOAT_DTYPES and tensor.dtype not in INTEGER_DTYPES:
            raise MergeError(f"base `{base_dir}` holds quantized weights (`{tensor_name}` is "
                             f"{tensor.dtype}): merge into the float16/bfloat16/float32 base the adapter "
                             "was trained from, not a 4-bit one")
    return Shard(path, header)


def safetensors_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a float dtype (``torch.float32`` -> ``F32``)."""
    return next(name for name, known in FLOAT_DTYPES.items() if known == dtype)


def write_shard(shard: Shard, dst: Path, dtype: torch.dtype, edited: Mapping[str, Any],
                merged: Callable[[str, torch.Tensor], torch.Tensor]) -> int:
    """Write ``shard`` to ``dst`` in ``dtype``; returns the bytes of its data section.

    ``merged(name, value)`` gives the new float32 value of each tensor in ``edited``;
    other float tensors are only cast, integer ones copied. A shard with nothing to
    change is copied as it is.
    """
    tensors = shard.header.tensors
    target = safetensors_dtype(dtype)
    as_is = {name for name, tensor in tensors.items()
             if name not in edited and tensor.dtype in (target, *INTEGER_DTYPES)}
    if len(as_is) == len(tensors):
        shutil.copyfile(shard.path, dst)
        return shard.path.stat().st_size - shard.header.data_start

    # The new header first: the same tensors in the same order, floats in the new dtype.
    names = sorted(tensors, key=lambda n: tensors[n].begin)
    out: dict[str, Any] = {"__metadata__": shard.header.metadata or {"format": "pt"}}
    offset = 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype in FLOAT_DTYPES:
            new_dtype, size = target, math.prod(tensor.shape) * dtype.itemsize
        else:
            new_dtype, size = tensor.dtype, tensor.nbytes
        out[name] = {"dtype": new_dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(out, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes

    # Then the data, one tensor at a time.
    with shard.path.open("rb") as fin, dst.open("wb") as fout:
        fout.write(len(blob).to_bytes(8, "little") + blob)
        for name in names:
            tensor = tensors[name]
            fin.seek(shard.header.data_start + tensor.begin)
            if name in as_is:
                fout.write(fin.read(tensor.nbytes))
                continue
            value = torch.empty(tensor.shape, dtype=FLOAT_DTYPES[tensor.dtype])
            if fin.readinto(_bytes_of(value)) != tensor.nbytes:
                raise MergeError(f"base shard `{shard.path}` is truncated at tensor `{name}`")
            if name in edited:
                value = merged(name, value.float())
            fout.write(_bytes_of(value.to(dtype).contiguous()))
    return offset


def _bytes_of(tensor: torch.Tensor) -> Any:
    """A contiguous tensor's memory as a writable byte buffer (numpy has no bfloat16: viewed as uint8)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()
