"""The base's shards as the merger reads them: a header the protocol's reader refuses is a MergeError naming
the file, and an index may only name shard files beside it. Nothing is written when the base is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pefthub_worker.merging import MergeError, merge


@pytest.fixture
def base(tiny_base, tmp_path) -> Path:
    """A copy of the tiny base that a test may break."""
    return Path(shutil.copytree(tiny_base, tmp_path / "base"))


def _header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and its length in bytes."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), n


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


def _header_past_the_end(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes((len(data) + 1).to_bytes(8, "little") + data[8:])


def _overlapping_tensors(path: Path) -> None:
    data = path.read_bytes()
    header, n = _header(path)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    blob += b" " * (n - len(blob))  # the same length, so only the offsets are wrong
    path.write_bytes(data[:8] + blob + data[8 + n:])


@pytest.mark.parametrize(("damage", "words"), [
    (_truncate, "past the end of the"),
    (_header_past_the_end, "runs past the end"),
    (_overlapping_tensors, "overlapping"),
])
def test_malformed_base_header_is_refused_naming_the_file(base, tiny_adapter, tmp_path, damage, words):
    damage(base / "model.safetensors")
    with pytest.raises(MergeError, match=words) as refused:
        merge(base_dir=base, adapters=[(tiny_adapter[0], 1.0)], output_dir=tmp_path / "merged")
    message = str(refused.value)
    assert str(base) in message and "`model.safetensors` is not a valid safetensors file" in message
    assert not (tmp_path / "merged").exists()


def _index(base: Path, shard: str) -> None:
    header, _ = _header(base / "model.safetensors")
    weight_map = {name: shard for name in header if name != "__metadata__"}
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(("shard", "words"), [
    ("../elsewhere.safetensors", "not a file beside it"),
    ("model-00001-of-00002.safetensors", "there is no such file"),
])
def test_index_may_only_name_shards_beside_it(base, tiny_adapter, tmp_path, shard, words):
    _index(base, shard)
    with pytest.raises(MergeError, match=words) as refused:
        merge(base_dir=base, adapters=[(tiny_adapter[0], 1.0)], output_dir=tmp_path / "merged")
    assert shard in str(refused.value)
    assert not (tmp_path / "merged").exists()
