"""Tiny real artefacts for the registry's file checks: Llama and GPT-2 bases saved with transformers, real peft adapters on them."""

from __future__ import annotations

import json
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
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from pefthub_server.core.errors import ValidationFailed
from pefthub_server.registry import acceptance, compatibility


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

    result = acceptance.parse_safetensors_header(path.name, len(data), read_range)
    assert len(calls) <= 2
    return result


def fingerprint_of(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    tensors: dict[str, dict] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(read_header(shard))
    return compatibility.compute_fingerprint(config, tensors)


class Adapter:
    def __init__(self, folder: Path):
        self.folder = folder
        self.config = acceptance.parse_adapter_config((folder / "adapter_config.json").read_bytes())
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


def fails(code: str, fn, *args, **kwargs) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def build(root: Path) -> dict:
    """Bases, their fingerprints and adapters under ``root``."""
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
