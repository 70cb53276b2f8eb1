"""registry.acceptance: which files a version may hold, against real artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    LlamaForCausalLM,
)

from pefthub_server.registry import acceptance
from tests.backend.registry.artefacts import fails, fingerprint_of, llama_config, read_header

ADVICE = "safe_serialization=True"


@pytest.mark.parametrize(("path", "category"), [
    ("adapter_model.safetensors", "safetensors"), ("sub/model-00001-of-00002.safetensors", "safetensors"),
    ("adapter_config.json", "json"), ("tokenizer.json", "json"), ("train.jsonl", "jsonl"),
    ("notes.txt", "text"), ("README.md", "text"), ("README", "text"), ("LICENSE", "text"),
    (".gitattributes", "text"), ("tokenizer.model", "tokenizer"), ("cl100k.tiktoken", "tokenizer"),
    ("vocab.txt", "tokenizer"), ("merges.txt", "tokenizer"), ("spiece.model", "tokenizer"),
    ("sentencepiece.bpe.model", "tokenizer"),
])
def test_check_file_type_categories(path: str, category: str) -> None:
    assert acceptance.check_file_type(path) == category


@pytest.mark.parametrize("path", ["pytorch_model.bin", "adapter_model.bin", "x.pt", "sub/x.pth", "x.pkl",
                                  "x.pickle", "last.ckpt", "model.joblib", "MODEL.BIN"])
def test_check_file_type_refuses_pickle_by_name(path: str) -> None:
    err = fails("pickle_refused", acceptance.check_file_type, path)
    assert f"`{path}`" in err.message
    assert "arbitrary code" in err.message and ADVICE in err.message and "save_file" in err.message


@pytest.mark.parametrize("path", ["x.npy", "x.npz", "model.h5", "model.onnx", "model.gguf", "data.csv",
                                  "run.py", "x.safetensors.tmp", "Makefile"])
def test_check_file_type_refuses_other_types(path: str) -> None:
    err = fails("file_type_refused", acceptance.check_file_type, path)
    assert f"`{path}`" in err.message and "*.safetensors" in err.message


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_save_refused_by_name_and_renamed_by_magic(tmp_path: Path, zip_format: bool) -> None:
    target = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(3)}, target, _use_new_zipfile_serialization=zip_format)
    fails("pickle_refused", acceptance.check_file_type, "pytorch_model.bin")
    renamed = target.rename(tmp_path / "model.safetensors")
    assert acceptance.check_file_type("model.safetensors") == "safetensors"  # the name passes...
    err = fails("pickle_refused", acceptance.check_magic, "model.safetensors", renamed.read_bytes()[:16])  # ...the bytes don't
    assert ("zip" if zip_format else "pickle data (protocol 2)") in err.message
    assert ADVICE in err.message


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle_refused_by_magic(protocol: int) -> None:
    import pickle

    fails("pickle_refused", acceptance.check_magic, "data.json", pickle.dumps({"a": 1}, protocol=protocol)[:16])


def test_check_magic_accepts_real_files(art: dict) -> None:
    for path in [art["root"] / "llama" / "model.safetensors", art["root"] / "llama" / "config.json",
                 art["adapters"]["lora_qv"].folder / "adapter_model.safetensors"]:
        acceptance.check_magic(path.name, path.read_bytes()[:16])
    acceptance.check_magic("empty.txt", b"")


def test_check_magic_accepts_safetensors_whose_length_looks_like_pickle(tmp_path: Path) -> None:
    # A 640-byte header is written as 80 02 00 .. : the bytes of pickle protocol 2.
    for pad in range(700):
        path = tmp_path / "m.safetensors"
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * pad})
        head = path.read_bytes()[:16]
        if head[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("could not produce a 640-byte header")
    acceptance.check_magic("m.safetensors", head)
    assert read_header(path) == {"w": {"dtype": "F32", "shape": [2]}}


def test_header_parse_of_sharded_base_equals_single_file(art: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert fingerprint_of(tmp_path) == art["fp"]["llama"]


def test_parse_json_reports_line_and_column() -> None:
    assert acceptance.parse_json("c.json", b'{"a": [1, 2]}') == {"a": [1, 2]}
    err = fails("invalid_json", acceptance.parse_json, "sub/c.json", b'{\n  "a": 1,\n  "b": }')
    assert "`sub/c.json`" in err.message and "line 3, column 8" in err.message
    assert (err.detail["line"], err.detail["column"]) == (3, 8)
    assert "not UTF-8" in fails("invalid_json", acceptance.parse_json, "c.json", b'{"a": "\xff"}').message
    assert "not an object" in fails("invalid_json", acceptance.parse_json, "c.json", b"[1]").message
    assert "NaN" in fails("invalid_json", acceptance.parse_json, "c.json", b'{"a": NaN}').message
    deep = fails("invalid_json", acceptance.parse_json, "c.json", b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    assert "`c.json`" in deep.message and "nested more than 64 levels deep" in deep.message


def test_parse_adapter_config_of_real_adapters(art: dict) -> None:
    ad = art["adapters"]
    config = dict(ad["lora_qv"].config)
    assert sorted(config.pop("target_modules")) == ["q_proj", "v_proj"]  # peft saves a set: any order
    assert config == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "use_dora": False,
        "modules_to_save": None, "num_virtual_tokens": None, "base_model_name_or_path": None,
    }
    assert ad["dora"].config["use_dora"] is True
    assert ad["lora_regex"].config["target_modules"] == r".*\.(q_proj|down_proj)"
    assert ad["ia3"].config["peft_type"] == "IA3" and ad["ia3"].config["r"] is None
    assert ad["prompt"].config["peft_type"] == "PROMPT_TUNING" and ad["prompt"].config["num_virtual_tokens"] == 5
    assert ad["prefix"].config["peft_type"] == "PREFIX_TUNING"
    assert ad["lora_rank_pattern_bias_mts"].config["modules_to_save"] == ["lm_head"]


@pytest.mark.parametrize(("change", "field"), [
    ({"peft_type": None}, "peft_type"), ({"peft_type": 3}, "peft_type"), ({"peft_type": "FANCY"}, "peft_type"),
    ({"r": 0}, "r"), ({"r": -4}, "r"), ({"r": "8"}, "r"), ({"r": None}, "r"), ({"r": True}, "r"),
    ({"lora_alpha": "16"}, "lora_alpha"), ({"target_modules": [1]}, "target_modules"),
    ({"target_modules": "q_proj("}, "target_modules"), ({"use_dora": "yes"}, "use_dora"),
    ({"modules_to_save": "lm_head"}, "modules_to_save"), ({"task_type": 1}, "task_type"),
])
def test_parse_adapter_config_refuses(change: dict, field: str) -> None:
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], **change}
    err = fails("invalid_adapter_config", acceptance.parse_adapter_config, json.dumps(cfg).encode())
    assert f"`{field}`" in err.message and err.detail["field"] == field


def test_parse_adapter_config_prompt_tuning_needs_virtual_tokens() -> None:
    fails("invalid_adapter_config", acceptance.parse_adapter_config, b'{"peft_type": "PROMPT_TUNING"}')
    assert acceptance.parse_adapter_config(b'{"peft_type": "lora", "r": 2}')["peft_type"] == "LORA"
    fails("invalid_json", acceptance.parse_adapter_config, b"{")
