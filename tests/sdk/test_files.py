from __future__ import annotations

import hashlib
import os

import pytest

from pefthub import ValidationError
from pefthub._files import collect_files, infer_kind, sha256_file


def write(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_skips_hidden_and_outside_links_and_uses_slash_paths(tmp_path):
    root = tmp_path / "out"
    write(root / "adapter_config.json", b"{}")
    write(root / "adapter_model.safetensors", b"weights")
    write(root / "tokenizer" / "nested" / "vocab.json", b"{}")
    write(root / ".git" / "config", b"git")
    write(root / ".cache" / "huggingface" / "x.lock", b"lock")
    write(root / ".env", b"SECRET=1")
    write(root / "tokenizer" / ".DS_Store", b"junk")
    outside = write(tmp_path / "elsewhere" / "secret.txt", b"secret")
    os.symlink(outside, root / "leak.txt")
    os.symlink(tmp_path / "elsewhere", root / "leakdir")
    os.symlink(root / "adapter_config.json", root / "alias_config.json")
    os.symlink(root / "missing", root / "broken.json")
    os.symlink(root, root / "tokenizer" / "loop")

    files = collect_files(root)

    assert [f.path for f in files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "alias_config.json",
        "tokenizer/nested/vocab.json",
    ]
    by_path = {f.path: f for f in files}
    assert by_path["adapter_model.safetensors"].size == len(b"weights")
    assert by_path["alias_config.json"].abspath.read_bytes() == b"{}"


def test_walk_single_file_uses_its_name(tmp_path):
    f = write(tmp_path / "data" / "train.jsonl", b'{"text": "hi"}\n')
    [entry] = collect_files(f)
    assert (entry.path, entry.size, entry.abspath) == ("train.jsonl", 15, f)


def test_walk_missing_path_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match="no such file"):
        collect_files(tmp_path / "nope")


def test_sha256_streams_across_chunk_boundaries(tmp_path):
    data = os.urandom(1024) * (9 * 1024) + b"end"  # 9 MiB + 3: more than one 8 MiB chunk
    path = write(tmp_path / "big.safetensors", data)
    seen = []
    assert sha256_file(path, on_bytes=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 2


@pytest.mark.parametrize(
    ("paths", "kind"),
    [
        (["adapter_config.json", "adapter_model.safetensors", "README.md"], "adapter"),
        (["adapter_config.json", "config.json", "model.safetensors"], "adapter"),
        (["config.json", "model-00001-of-00002.safetensors", "tokenizer.json"], "model"),
        (["config.json", "MODEL.SAFETENSORS"], "model"),
        (["train.jsonl"], "dataset"),
        (["data/train.jsonl", "data/eval.jsonl", "README.md"], "dataset"),
    ],
)
def test_infer_kind(paths, kind):
    assert infer_kind(paths) == kind


@pytest.mark.parametrize(
    "paths",
    [
        ["README.md"],
        ["config.json"],  # a model needs weights
        ["model.safetensors"],  # ... and a config
        ["sub/adapter_config.json", "sub/adapter_model.safetensors"],  # not at the top
        [],
    ],
)
def test_infer_kind_refuses_and_says_to_pass_kind(paths):
    with pytest.raises(ValidationError, match="pass kind="):
        infer_kind(paths)
