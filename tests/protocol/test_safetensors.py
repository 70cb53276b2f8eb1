"""pefthub.protocol.safetensors: the strict header reader against real files and crafted lies."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pefthub.protocol.safetensors import read_header, read_header_file
from tests.protocol.conftest import refused


def test_header_parse_matches_safe_open(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 2, 2).bfloat16(),
        "f64": torch.randn(1, 1, dtype=torch.float64), "i64": torch.arange(4), "i32": torch.arange(3).int(),
        "i16": torch.arange(3).short(), "i8": torch.arange(3, dtype=torch.int8), "u8": torch.arange(5).byte(),
        "bool": torch.tensor([True, False]), "f8": torch.zeros(4, 2).to(torch.float8_e4m3fn),
        "f8b": torch.zeros(3).to(torch.float8_e5m2), "scalar": torch.tensor(3.0), "empty": torch.zeros(0, 3),
        "u16": torch.zeros(3, dtype=torch.uint16), "c64": torch.zeros(2, dtype=torch.complex64),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    ours = shapes(read_header_file(path))
    with safe_open(path, "pt") as f:
        theirs = {k: {"dtype": f.get_slice(k).get_dtype(), "shape": list(f.get_slice(k).get_shape())}
                  for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert ours == theirs
    assert set(ours) == set(tensors)


def shapes(header) -> dict[str, dict]:
    return {name: {"dtype": t.dtype, "shape": list(t.shape)} for name, t in header.tensors.items()}


def craft(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def t(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(("blob", "says"), [
    (craft({"a": t("F32", [4], 0, 16)}, b"\0" * 8), "past the end"),
    (craft({"a": t("F32", [4], 0, 12)}, b"\0" * 12), "span 12"),
    (craft({"a": t("F32", [2, 3], 0, 16)}, b"\0" * 16), "24 bytes"),
    (craft({"a": t("F32", [4], 0, 16), "b": t("F32", [2], 8, 16)}, b"\0" * 16), "overlapping"),
    (craft({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 12, 20)}, b"\0" * 20), "hole"),
    (craft({"a": t("F32", [2], 0, 8)}, b"\0" * 12), "cover 8 bytes"),
    (craft({"a": t("F32", [2], 0, 8)}, b"\0" * 8, length=10_000), "past the end of the"),
    (craft({"a": t("F32", [2], 0, 8)}, b"\0" * 8, length=2**63), "outside"),
    (craft(b"{not json", b"\0" * 8), "not a UTF-8 JSON"),
    (craft(b"\xff\xfe{}", b""), "not a UTF-8 JSON"),
    (craft(b'["a"]'), "not a UTF-8 JSON"),
    (craft(b' {"a": 1}'), "not a UTF-8 JSON"),
    (craft(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}', b"\0" * 4), "duplicate"),
    (craft({"a": t("F33", [1], 0, 4)}, b"\0" * 4), "unknown dtype"),
    (craft({"a": t("F32", [-1], 0, 4)}, b"\0" * 4), "non-negative"),
    (craft({"a": t("F32", [True], 0, 4)}, b"\0" * 4), "non-negative"),
    (craft({"a": t("F32", [1.0], 0, 4)}, b"\0" * 4), "non-negative"),
    (craft({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4), "data_offsets"),
    (craft({"a": t("F32", [1], 4, 0)}, b"\0" * 4), "begin <= end"),
    (craft({"a": t("F4", [3], 0, 1)}, b"\0"), "1.5 bytes"),
    (craft({"__metadata__": {"k": 1}}), "__metadata__"),
    (craft({"a": [1, 2]}), "not an object"),
    (b"\x02\x00\x00", "too short"),
    (struct.pack("<Q", 1) + b"{", "outside"),
    (craft(b"[" * 5000 + b"]" * 5000), "not a UTF-8 JSON"),
    (craft(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), "not a UTF-8 JSON"),
])
def test_header_that_lies_is_refused(blob: bytes, says: str) -> None:
    err = refused("invalid_safetensors", read_header, len(blob), lambda s, n: blob[s:s + n], path="bad.safetensors")
    assert "`bad.safetensors`" in err.message
    assert says in err.message


def test_header_error_names_the_tensor() -> None:
    blob = craft({"good": t("F32", [1], 0, 4), "model.w": t("F16", [3], 4, 8)}, b"\0" * 8)
    err = refused("invalid_safetensors", read_header, len(blob), lambda s, n: blob[s:s + n], path="x.safetensors")
    assert "tensor `model.w`" in err.message and err.detail["tensor"] == "model.w"


def test_header_allows_zero_sized_tensors_and_metadata() -> None:
    blob = craft({"__metadata__": {"format": "pt"}, "e": t("F32", [0, 3], 0, 0), "a": t("BF16", [2], 0, 4)},
                 b"\0" * 4)
    header = read_header(len(blob), lambda s, n: blob[s:s + n], path="x")
    assert shapes(header) == {"e": {"dtype": "F32", "shape": [0, 3]}, "a": {"dtype": "BF16", "shape": [2]}}
    assert header.metadata == {"format": "pt"} and header.data_start == len(blob) - 4
