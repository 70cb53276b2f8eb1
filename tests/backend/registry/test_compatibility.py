"""registry.compatibility: base fingerprints and adapters checked against them, with real peft adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaModel,
)

from pefthub_server.registry import compatibility
from tests.backend.registry.artefacts import ADAPTERS, BASES, fails, fingerprint_of, llama_config


def misfit(code: str, config: dict, tensors: dict, fingerprint: dict, base_label: str):
    """The error ``check_adapter_against_base`` raises with ``code``."""
    return fails(code, compatibility.check_adapter_against_base, config, tensors, fingerprint, base_label=base_label)


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


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_real_adapter_fits_its_base(art: dict, name: str) -> None:
    adapter = art["adapters"][name]
    assert adapter.tensors
    compatibility.check_adapter_against_base(adapter.config, adapter.tensors, art["fp"][ADAPTERS[name][0]], base_label="acme/b@1")


def test_adapter_fits_base_saved_without_model_prefix(art: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    LlamaModel(llama_config()).save_pretrained(tmp_path)
    fp = fingerprint_of(tmp_path)
    assert "layers.0.self_attn.q_proj" in fp["modules"]
    for name in ("lora_qv", "dora", "ia3", "lora_regex"):
        adapter = art["adapters"][name]
        compatibility.check_adapter_against_base(adapter.config, adapter.tensors, fp, base_label="acme/bare@1")


def test_lora_for_smaller_base_is_shape_mismatch(art: dict) -> None:
    adapter = art["adapters"]["small_lora_qv"]
    err = misfit("shape_mismatch", adapter.config, adapter.tensors, art["fp"]["llama"], "acme/llama-tiny@1")
    assert err.message.startswith("`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` has shape "
                                  "[8, 32] but base `acme/llama-tiny@1` module `model.layers.0.self_attn.q_proj` "
                                  "has in_features 64")
    assert err.detail["got"] == [8, 32]
    # and the other way round
    big = art["adapters"]["lora_qv"]
    misfit("shape_mismatch", big.config, big.tensors, art["fp"]["llama32"], "acme/small@1")


def test_prompt_tuning_for_other_hidden_size_is_shape_mismatch(art: dict) -> None:
    small = art["adapters"]["small_prompt"]
    err = misfit("shape_mismatch", small.config, small.tensors, art["fp"]["llama"], "acme/llama-tiny@1")
    assert "hidden size 64" in err.message


def test_prefix_tuning_must_fit_layer_count(art: dict) -> None:
    prefix = art["adapters"]["prefix"]
    assert prefix.tensors["prompt_embeddings"]["shape"] == [5, 2 * 2 * 64]
    fp3 = {**art["fp"]["llama"], "num_layers": 3}
    err = misfit("shape_mismatch", prefix.config, prefix.tensors, fp3, "b@1")
    assert "3 layers" in err.message


def test_unknown_target_module(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    config = {**adapter.config, "target_modules": ["q_proj", "nonexistent_proj"]}
    err = misfit("unknown_module", config, adapter.tensors, art["fp"]["llama"], "acme/llama-tiny@2")
    assert err.message.startswith("adapter targets `nonexistent_proj` but base `acme/llama-tiny@2` has no such module")
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in err.message
    regex = {**adapter.config, "target_modules": r".*\.nonexistent_proj"}
    misfit("unknown_module", regex, adapter.tensors, art["fp"]["llama"], "b")


def test_gpt2_adapter_on_llama_is_refused(art: dict) -> None:
    adapter = art["adapters"]["gpt2_lora"]
    err = misfit("unknown_module", adapter.config, adapter.tensors, art["fp"]["llama"], "acme/llama-tiny@1")
    assert "`c_attn`" in err.message


def test_tensor_for_module_the_base_lacks(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    tensors = dict(adapter.tensors)
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = {"dtype": "F32", "shape": [8, 64]}
    err = misfit("unknown_module", adapter.config, tensors, art["fp"]["llama"], "b@1")
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
    err = misfit("shape_mismatch", adapter.config, tensors, art["fp"][ADAPTERS[name][0]], "b@1")
    assert suffix in err.message and expected in err.message


def test_dora_magnitude_saved_with_weight_suffix_fits(art: dict) -> None:
    # Some peft versions save DoRA's magnitude as `lora_magnitude_vector.weight`.
    adapter = art["adapters"]["dora"]
    tensors = {k + ".weight" if k.endswith("lora_magnitude_vector") else k: i for k, i in adapter.tensors.items()}
    assert tensors != adapter.tensors
    compatibility.check_adapter_against_base(adapter.config, tensors, art["fp"]["llama"], base_label="b@1")
    bad = retarget(tensors, "q_proj.lora_magnitude_vector.weight", [128])
    misfit("shape_mismatch", adapter.config, bad, art["fp"]["llama"], "b@1")


def test_ambiguous_module_is_unknown() -> None:
    fp = {"modules": {"encoder.layers.0.q": [8, 8], "decoder.layers.0.q": [8, 8]}, "embeddings": {}}
    adapter = {"peft_type": "LORA", "target_modules": ["q"]}
    tensors = {"base_model.model.layers.0.q.lora_A.weight": {"dtype": "F32", "shape": [2, 8]}}
    err = misfit("unknown_module", adapter, tensors, fp, "acme/t5@1")
    assert "several modules" in err.message and "decoder.layers.0.q" in err.message
    exact = {"base_model.model.encoder.layers.0.q.lora_A.weight": {"dtype": "F32", "shape": [2, 8]}}
    compatibility.check_adapter_against_base(adapter, exact, fp, base_label="acme/t5@1")


def test_fingerprint_without_modules_checks_nothing_but_empty_modules_refuse(art: dict) -> None:
    adapter = art["adapters"]["lora_qv"]
    compatibility.check_adapter_against_base(adapter.config, adapter.tensors, {}, base_label="b@1")
    misfit("unknown_module", adapter.config, adapter.tensors, {"modules": {}, "embeddings": {}}, "b@1")


def test_fingerprint_of_config_without_tie_flag_or_with_text_config() -> None:
    tensors = {"model.embed_tokens.weight": {"dtype": "F16", "shape": [100, 16]},
               "model.layers.0.q_proj.weight": {"dtype": "F16", "shape": [16, 16]}}
    fp = compatibility.compute_fingerprint({"model_type": "x", "vocab_size": 100, "hidden_size": 16}, tensors)
    assert fp["tie_word_embeddings"] is True and fp["modules"]["lm_head"] == [16, 100]
    fp = compatibility.compute_fingerprint({"text_config": {"hidden_size": 16, "tie_word_embeddings": False}}, tensors)
    assert fp["hidden_size"] == 16 and "lm_head" not in fp["modules"] and fp["tie_word_embeddings"] is False
    assert compatibility.compute_fingerprint({"text_config": "odd"}, tensors)["hidden_size"] is None
