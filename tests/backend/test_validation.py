"""registry.validation against real artefacts: tiny Llama and GPT-2 bases saved with
transformers, real peft adapters on them, real safetensors and torch.save files.

No database: run with ``-p no:django``. Models are built once per module.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from peft import (
    IA3Config,
    LoHaConfig,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)

from pefthub_server.core.errors import ValidationFailed
from pefthub_server.registry import validation as v

ADVICE = "safe_serialization=True"


@pytest.fixture(autouse=True)
def local_storage() -> None:
    """Override the suite's autouse blob-store fixture: these checks touch no storage
    and must run without Django settings (``-p no:django``)."""


def llama_config(hidden: int = 64, tied: bool = False) -> LlamaConfig:
    return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=4, vocab_size=128, tie_word_embeddings=tied)


def gpt2_config() -> GPT2Config:
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128)


def read_header(path: Path) -> dict[str, dict]:
    """parse_safetensors_header over a local file, asserting it reads at most twice."""
    calls: list[tuple[int, int]] = []
    data = path.read_bytes()

    def read_range(start: int, length: int) -> bytes:
        calls.append((start, length))
        return data[start:start + length]

    result = v.parse_safetensors_header(path.name, len(data), read_range)
    assert len(calls) <= 2
    return result


def fingerprint_of(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    tensors: dict[str, dict] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(read_header(shard))
    return v.compute_fingerprint(config, tensors)


class Adapter:
    def __init__(self, folder: Path):
        self.folder = folder
        self.config = v.parse_adapter_config((folder / "adapter_config.json").read_bytes())
        self.tensors = read_header(folder / "adapter_model.safetensors")


ADAPTERS = {
    # name: (base, peft config factory)
    "lora_qv": ("llama", lambda: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM")),
    "lora_all_linear": ("llama", lambda: LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")),
    "lora_regex": ("llama", lambda: LoraConfig(r=4, target_modules=r".*\.(q_proj|down_proj)", task_type="CAUSAL_LM")),
    "lora_rank_pattern_bias_mts": ("llama", lambda: LoraConfig(
        r=4, target_modules=["q_proj"], rank_pattern={"layers.0.self_attn.q_proj": 2}, lora_bias=True,
        modules_to_save=["lm_head"], task_type="CAUSAL_LM")),
    "lora_embedding": ("llama", lambda: LoraConfig(r=4, target_modules=["embed_tokens", "lm_head"],
                                                   task_type="CAUSAL_LM")),
    "dora": ("llama", lambda: LoraConfig(r=4, target_modules=["q_proj", "down_proj"], use_dora=True,
                                         task_type="CAUSAL_LM")),
    "ia3": ("llama", lambda: IA3Config(task_type="CAUSAL_LM")),
    "loha": ("llama", lambda: LoHaConfig(r=4, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM")),
    "prompt": ("llama", lambda: PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM")),
    "prefix": ("llama", lambda: PrefixTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM")),
    "gpt2_lora": ("gpt2", lambda: LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                             task_type="CAUSAL_LM")),
    "gpt2_ia3": ("gpt2", lambda: IA3Config(task_type="CAUSAL_LM")),
    "small_lora_qv": ("llama32", lambda: LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
    "small_prompt": ("llama32", lambda: PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM")),
}
BASES = {
    "llama": lambda: LlamaForCausalLM(llama_config()),
    "llama32": lambda: LlamaForCausalLM(llama_config(hidden=32)),
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config()),
}


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Bases, their fingerprints and adapters, built once."""
    root = tmp_path_factory.mktemp("artefacts")
    out: dict = {"root": root, "fp": {}, "adapters": {}}
    for i, (name, make) in enumerate(BASES.items()):
        torch.manual_seed(i)
        make().save_pretrained(root / name)
        out["fp"][name] = fingerprint_of(root / name)
    for i, (name, (base, make_config)) in enumerate(ADAPTERS.items()):
        torch.manual_seed(100 + i)
        model = get_peft_model(BASES[base](), make_config())
        model.save_pretrained(root / name)
        out["adapters"][name] = Adapter(root / name)
    return out


def fails(code: str, fn, *args, **kwargs) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


# ---------------------------------------------------------------- paths and file types

@pytest.mark.parametrize("path", ["adapter_model.safetensors", "a/b/c.json", "tokenizer/vocab.txt",
                                  ".gitattributes", "x" * v.MAX_PATH_LENGTH, "données/é.md", "a..b/c.d.json"])
def test_check_path_accepts_relative_paths_unchanged(path: str) -> None:
    assert v.check_path(path) == path


@pytest.mark.parametrize(("path", "rule"), [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("C:/Windows/x.json", "absolute"),
    ("c:x.json", "absolute"),
    ("../x.json", "'..'"),
    ("a/../../x.json", "'..'"),
    ("./x.json", "'.'"),
    ("a/./x.json", "'.'"),
    ("a//b.json", "empty component"),
    ("a/", "empty component"),
    ("a\\b.json", "backslash"),
    ("a\x00b.json", "control"),
    ("a\nb.json", "control"),
    ("a\x7fb.json", "control"),
    ("x" * (v.MAX_PATH_LENGTH + 1), "limit"),
    (".git/config", ".git"),
    ("sub/.GIT/hooks/pre-commit", ".git"),
])
def test_check_path_refuses(path: str, rule: str) -> None:
    err = fails("invalid_path", v.check_path, path)
    assert rule in err.message
    assert "path `" in err.message


@pytest.mark.parametrize(("path", "category"), [
    ("adapter_model.safetensors", "safetensors"), ("sub/model-00001-of-00002.safetensors", "safetensors"),
    ("adapter_config.json", "json"), ("tokenizer.json", "json"), ("train.jsonl", "jsonl"),
    ("notes.txt", "text"), ("README.md", "text"), ("README", "text"), ("LICENSE", "text"),
    (".gitattributes", "text"), ("tokenizer.model", "tokenizer"), ("cl100k.tiktoken", "tokenizer"),
    ("vocab.txt", "tokenizer"), ("merges.txt", "tokenizer"), ("spiece.model", "tokenizer"),
    ("sentencepiece.bpe.model", "tokenizer"),
])
def test_check_file_type_categories(path: str, category: str) -> None:
    assert v.check_file_type(path) == category


@pytest.mark.parametrize("path", ["pytorch_model.bin", "adapter_model.bin", "x.pt", "sub/x.pth", "x.pkl",
                                  "x.pickle", "last.ckpt", "model.joblib", "MODEL.BIN"])
def test_check_file_type_refuses_pickle_by_name(path: str) -> None:
    err = fails("pickle_refused", v.check_file_type, path)
    assert f"`{path}`" in err.message
    assert "arbitrary code" in err.message and ADVICE in err.message and "save_file" in err.message


@pytest.mark.parametrize("path", ["x.npy", "x.npz", "model.h5", "model.onnx", "model.gguf", "data.csv",
                                  "run.py", "x.safetensors.tmp", "Makefile"])
def test_check_file_type_refuses_other_types(path: str) -> None:
    err = fails("file_type_refused", v.check_file_type, path)
    assert f"`{path}`" in err.message and "*.safetensors" in err.message


# ---------------------------------------------------------------- pickle magic

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_save_refused_by_name_and_renamed_by_magic(tmp_path: Path, zip_format: bool) -> None:
    target = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(3)}, target, _use_new_zipfile_serialization=zip_format)
    fails("pickle_refused", v.check_file_type, "pytorch_model.bin")
    renamed = target.rename(tmp_path / "model.safetensors")
    assert v.check_file_type("model.safetensors") == "safetensors"  # the name passes...
    err = fails("pickle_refused", v.check_magic, "model.safetensors", renamed.read_bytes()[:16])  # ...the bytes don't
    assert ("zip" if zip_format else "pickle data (protocol 2)") in err.message
    assert ADVICE in err.message


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle_refused_by_magic(protocol: int) -> None:
    import pickle

    fails("pickle_refused", v.check_magic, "data.json", pickle.dumps({"a": 1}, protocol=protocol)[:16])


def test_check_magic_accepts_real_files(art: dict) -> None:
    for path in [art["root"] / "llama" / "model.safetensors", art["root"] / "llama" / "config.json",
                 art["adapters"]["lora_qv"].folder / "adapter_model.safetensors"]:
        v.check_magic(path.name, path.read_bytes()[:16])
    v.check_magic("empty.txt", b"")


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
    v.check_magic("m.safetensors", head)
    assert read_header(path) == {"w": {"dtype": "F32", "shape": [2]}}


# ---------------------------------------------------------------- safetensors headers

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
    ours = read_header(path)
    with safe_open(path, "pt") as f:
        theirs = {k: {"dtype": f.get_slice(k).get_dtype(), "shape": list(f.get_slice(k).get_shape())}
                  for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert ours == theirs
    assert set(ours) == set(tensors)


def test_header_parse_of_sharded_base_equals_single_file(art: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert fingerprint_of(tmp_path) == art["fp"]["llama"]


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
    err = fails("invalid_safetensors", v.parse_safetensors_header, "bad.safetensors", len(blob),
                lambda s, n: blob[s:s + n])
    assert "`bad.safetensors`" in err.message
    assert says in err.message


def test_header_error_names_the_tensor() -> None:
    blob = craft({"good": t("F32", [1], 0, 4), "model.w": t("F16", [3], 4, 8)}, b"\0" * 8)
    err = fails("invalid_safetensors", v.parse_safetensors_header, "x.safetensors", len(blob),
                lambda s, n: blob[s:s + n])
    assert "tensor `model.w`" in err.message and err.detail["tensor"] == "model.w"


def test_header_allows_zero_sized_tensors_and_metadata() -> None:
    blob = craft({"__metadata__": {"format": "pt"}, "e": t("F32", [0, 3], 0, 0), "a": t("BF16", [2], 0, 4)},
                 b"\0" * 4)
    assert v.parse_safetensors_header("x", len(blob), lambda s, n: blob[s:s + n]) == {
        "e": {"dtype": "F32", "shape": [0, 3]}, "a": {"dtype": "BF16", "shape": [2]}}


# ---------------------------------------------------------------- JSON and adapter configs

def test_parse_json_reports_line_and_column() -> None:
    assert v.parse_json("c.json", b'\xef\xbb\xbf{"a": [1, 2]}') == {"a": [1, 2]}
    err = fails("invalid_json", v.parse_json, "sub/c.json", b'{\n  "a": 1,\n  "b": }')
    assert "`sub/c.json`" in err.message and "line 3, column 8" in err.message
    assert (err.detail["line"], err.detail["column"]) == (3, 8)
    assert "not UTF-8" in fails("invalid_json", v.parse_json, "c.json", b'{"a": "\xff"}').message
    assert "not an object" in fails("invalid_json", v.parse_json, "c.json", b"[1]").message
    assert "NaN" in fails("invalid_json", v.parse_json, "c.json", b'{"a": NaN}').message
    assert "`c.json`" in fails("invalid_json", v.parse_json, "c.json", b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}").message


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
    err = fails("invalid_adapter_config", v.parse_adapter_config, json.dumps(cfg).encode())
    assert f"`{field}`" in err.message and err.detail["field"] == field


def test_parse_adapter_config_prompt_tuning_needs_virtual_tokens() -> None:
    fails("invalid_adapter_config", v.parse_adapter_config, b'{"peft_type": "PROMPT_TUNING"}')
    assert v.parse_adapter_config(b'{"peft_type": "lora", "r": 2}')["peft_type"] == "LORA"
    fails("invalid_json", v.parse_adapter_config, b"{")


# ---------------------------------------------------------------- fingerprints

def test_llama_fingerprint(art: dict) -> None:
    fp = art["fp"]["llama"]
    assert (fp["model_type"], fp["architectures"], fp["hidden_size"], fp["num_layers"]) == (
        "llama", ["LlamaForCausalLM"], 64, 2)
    mods = fp["modules"]
    assert mods["model.layers.0.self_attn.q_proj"] == [64, 64]
    assert mods["model.layers.1.mlp.gate_proj"] == [64, 128]
    assert mods["model.layers.0.mlp.up_proj"] == [64, 128]
    assert mods["model.layers.0.mlp.down_proj"] == [128, 64]
    assert mods["lm_head"] == [64, 128]
    assert fp["embeddings"] == {"model.embed_tokens": [128, 64]}
    assert len(mods) == 2 * 7 + 1  # 7 linears per layer + lm_head; no norms, no embeddings
    assert fp["tie_word_embeddings"] is False
    json.dumps(fp)  # stored as JSON


def test_gpt2_fingerprint_reads_conv1d_as_in_out_and_adds_tied_lm_head(art: dict) -> None:
    fp = art["fp"]["gpt2"]
    mods = fp["modules"]
    assert mods["transformer.h.0.attn.c_attn"] == [64, 192]
    assert mods["transformer.h.1.attn.c_proj"] == [64, 64]
    assert mods["transformer.h.0.mlp.c_fc"] == [64, 256]
    assert mods["transformer.h.0.mlp.c_proj"] == [256, 64]
    assert mods["lm_head"] == [64, 128]  # tied: not in the weights, but peft can target it
    assert fp["embeddings"] == {"transformer.wte": [128, 64], "transformer.wpe": [1024, 64]}
    assert fp["tie_word_embeddings"] is True and fp["hidden_size"] == 64


def test_fingerprint_matches_torch_modules(art: dict) -> None:
    """Cross-check against the instantiated models' nn.Linear / Conv1D features."""
    from transformers.pytorch_utils import Conv1D

    for name in ("llama", "gpt2"):
        model = BASES[name]()
        expected = {}
        for mod_name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                expected[mod_name] = [mod.in_features, mod.out_features]
            elif isinstance(mod, Conv1D):
                expected[mod_name] = [mod.weight.shape[0], mod.nf]
        assert art["fp"][name]["modules"] == expected


# ---------------------------------------------------------------- adapters against bases

@pytest.mark.parametrize("name", list(ADAPTERS))
def test_real_adapter_fits_its_base(art: dict, name: str) -> None:
    adapter = art["adapters"][name]
    assert adapter.tensors
    v.check_adapter_against_base(adapter.config, adapter.tensors, art["fp"][ADAPTERS[name][0]], base_label="acme/b@1")


def test_adapter_fits_base_saved_without_model_prefix(art: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    LlamaModel(llama_config()).save_pretrained(tmp_path)
    fp = fingerprint_of(tmp_path)
    assert "layers.0.self_attn.q_proj" in fp["modules"]
    for name in ("lora_qv", "dora", "ia3", "lora_regex"):
        adapter = art["adapters"][name]
        v.check_adapter_against_base(adapter.config, adapter.tensors, fp, base_label="acme/bare@1")


def test_lora_for_smaller_base_is_shape_mismatch(art: dict) -> None:
    adapter = art["adapters"]["small_lora_qv"]
    err = fails("shape_mismatch", v.check_adapter_against_base, adapter.config, adapter.tensors,
                art["fp"]["llama"], base_label="acme/llama-tiny@1")
    assert err.message.startswith("`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` has shape "
                                  "[8, 32] but base `acme/llama-tiny@1` module `model.layers.0.self_attn.q_proj` "
                                  "has in_features 64")
    assert err.detail["got"] == [8, 32]
    # and the other way round
    big = art["adapters"]["lora_qv"]
    fails("shape_mismatch", v.check_adapter_against_base, big.config, big.tensors, art["fp"]["llama32"],
          base_label="acme/small@1")


def test_prompt_tuning_for_other_hidden_size_is_shape_mismatch(art: dict) -> None:
    small = art["adapters"]["small_prompt"]
    err = fails("shape_mismatch", v.check_adapter_against_base, small.config, small.tensors, art["fp"]["llama"],
                base_label="acme/llama-tiny@1")
    assert "hidden size 64" in err.message


def test_prefix_tuning_must_fit_layer_count(art: dict) -> None:
    prefix = art["adapters"]["prefix"]
    assert prefix.tensors["prompt_embeddings"]["shape"] == [5, 2 * 2 * 64]
    fp3 = {**art["fp"]["llama"], "num_layers": 3}
    err = fails("shape_mismatch", v.check_adapter_against_base, prefix.config, prefix.tensors, fp3, base_label="b@1")
    assert "3 layers" in err.message


def test_unknown_target_module(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    config = {**adapter.config, "target_modules": ["q_proj", "nonexistent_proj"]}
    err = fails("unknown_module", v.check_adapter_against_base, config, adapter.tensors, art["fp"]["llama"],
                base_label="acme/llama-tiny@2")
    assert err.message.startswith("adapter targets `nonexistent_proj` but base `acme/llama-tiny@2` has no such module")
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in err.message
    regex = {**adapter.config, "target_modules": r".*\.nonexistent_proj"}
    fails("unknown_module", v.check_adapter_against_base, regex, adapter.tensors, art["fp"]["llama"], base_label="b")


def test_gpt2_adapter_on_llama_is_refused(art: dict) -> None:
    adapter = art["adapters"]["gpt2_lora"]
    err = fails("unknown_module", v.check_adapter_against_base, adapter.config, adapter.tensors, art["fp"]["llama"],
                base_label="acme/llama-tiny@1")
    assert "`c_attn`" in err.message


def test_tensor_for_module_the_base_lacks(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    tensors = dict(adapter.tensors)
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = {"dtype": "F32", "shape": [8, 64]}
    err = fails("unknown_module", v.check_adapter_against_base, adapter.config, tensors, art["fp"]["llama"],
                base_label="b@1")
    assert "`model.layers.9.self_attn.q_proj`" in err.message


def retarget(tensors: dict, suffix: str, shape: list[int]) -> dict:
    """A copy of ``tensors`` where the first key ending with ``suffix`` has ``shape``."""
    key = min(k for k in tensors if k.endswith(suffix))
    return {**tensors, key: {**tensors[key], "shape": shape}}


@pytest.mark.parametrize(("name", "suffix", "shape", "expected"), [
    ("dora", "q_proj.lora_magnitude_vector", [65], "[64]"),
    ("dora", "down_proj.lora_A.weight", [4, 64], "[r, 128]"),
    ("lora_qv", "v_proj.lora_B.weight", [64, 7], "rank 8"),
    ("ia3", "down_proj.ia3_l", [1, 64], "[1, 128]"),
    ("ia3", "k_proj.ia3_l", [64], "[64, 1]"),
    ("gpt2_ia3", "c_attn.ia3_l", [64, 1], "[192, 1]"),
    ("gpt2_lora", "c_attn.lora_B.weight", [64, 4], "[192, r]"),
    ("lora_embedding", "embed_tokens.lora_embedding_A", [4, 64], "[r, 128]"),
    ("loha", "q_proj.hada_w2_b", [4, 32], "[r, 64]"),
    ("lora_rank_pattern_bias_mts", "lm_head.weight", [128, 65], "[128, 64]"),
])
def test_tampered_shapes_are_mismatches(art: dict, name: str, suffix: str, shape: list[int], expected: str) -> None:
    adapter = art["adapters"][name]
    tensors = retarget(adapter.tensors, suffix, shape)
    err = fails("shape_mismatch", v.check_adapter_against_base, adapter.config, tensors,
                art["fp"][ADAPTERS[name][0]], base_label="b@1")
    assert suffix in err.message and expected in err.message


def test_dora_magnitude_saved_with_weight_suffix_fits(art: dict) -> None:
    # Some peft versions save DoRA's magnitude as `lora_magnitude_vector.weight`.
    adapter = art["adapters"]["dora"]
    tensors = {k + ".weight" if k.endswith("lora_magnitude_vector") else k: i for k, i in adapter.tensors.items()}
    assert tensors != adapter.tensors
    v.check_adapter_against_base(adapter.config, tensors, art["fp"]["llama"], base_label="b@1")
    bad = retarget(tensors, "q_proj.lora_magnitude_vector.weight", [128])
    fails("shape_mismatch", v.check_adapter_against_base, adapter.config, bad, art["fp"]["llama"], base_label="b@1")


def test_ambiguous_module_is_unknown() -> None:
    fp = {"modules": {"encoder.layers.0.q": [8, 8], "decoder.layers.0.q": [8, 8]}, "embeddings": {}}
    adapter = {"peft_type": "LORA", "target_modules": ["q"]}
    tensors = {"base_model.model.layers.0.q.lora_A.weight": {"dtype": "F32", "shape": [2, 8]}}
    err = fails("unknown_module", v.check_adapter_against_base, adapter, tensors, fp, base_label="acme/t5@1")
    assert "several modules" in err.message and "decoder.layers.0.q" in err.message
    exact = {"base_model.model.encoder.layers.0.q.lora_A.weight": {"dtype": "F32", "shape": [2, 8]}}
    v.check_adapter_against_base(adapter, exact, fp, base_label="acme/t5@1")


def test_fingerprint_without_modules_checks_nothing_but_empty_modules_refuse(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    v.check_adapter_against_base(adapter.config, adapter.tensors, {}, base_label="b@1")
    fails("unknown_module", v.check_adapter_against_base, adapter.config, adapter.tensors,
          {"modules": {}, "embeddings": {}}, base_label="b@1")


def test_fingerprint_of_config_without_tie_flag_or_with_text_config() -> None:
    tensors = {"model.embed_tokens.weight": {"dtype": "F16", "shape": [100, 16]},
               "model.layers.0.q_proj.weight": {"dtype": "F16", "shape": [16, 16]}}
    fp = v.compute_fingerprint({"model_type": "x", "vocab_size": 100, "hidden_size": 16}, tensors)
    assert fp["tie_word_embeddings"] is True and fp["modules"]["lm_head"] == [16, 100]
    fp = v.compute_fingerprint({"text_config": {"hidden_size": 16, "tie_word_embeddings": False}}, tensors)
    assert fp["hidden_size"] == 16 and "lm_head" not in fp["modules"] and fp["tie_word_embeddings"] is False
    assert v.compute_fingerprint({"text_config": "odd"}, tensors)["hidden_size"] is None
