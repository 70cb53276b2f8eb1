"""Tiny models, adapters and data made locally, offline, deterministically.

No model or dataset can be downloaded here, so tests, benchmarks and the README's
worked example build what they need: a byte-level BPE tokenizer trained on generated
text, a random-init Llama (or GPT-2) saved with ``save_pretrained``, and a LoRA adapter
trained a few steps on it with peft. Needs the ``torch``, ``transformers``, ``peft`` and
``tokenizers`` packages (the test/dev environment, not the hub server).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_SUBJECTS = ["the hub", "a model", "the adapter", "our team", "the worker", "a dataset", "the base", "every user"]
_VERBS = ["stores", "trains", "merges", "pulls", "pushes", "checks", "serves", "tags"]
_OBJECTS = ["small weights", "a new version", "the latest alias", "tokens", "safe tensors", "many specialists"]


def corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    """Generated English-like sentences: enough text to train a tiny tokenizer."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.randint(0, 999)}."
        for _ in range(lines)
    ]


def make_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,  # it prints blank lines off a tty
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_tiny_llama(out_dir: str | Path, *, hidden_size: int = 64, seed: int = 0, vocab_size: int = 512) -> Path:
    """A random-init Llama (148k params at hidden 64) with its tokenizer, saved with safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=vocab_size, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    make_tokenizer(vocab_size).save_pretrained(out)
    return out


def sample_input(seed: int = 0, length: int = 16):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 500, (2, length), generator=gen)


def train_lora(
    base_dir: str | Path, out_dir: str | Path, *, steps: int = 5, r: int = 8, target_modules=("q_proj", "v_proj"),
    seed: int = 0, use_dora: bool = False,
):
    """Train a LoRA adapter a few steps on random tokens; save it; return its logits on ``sample_input()``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), task_type="CAUSAL_LM", use_dora=use_dora)
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = sample_input(seed + 1, 32)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    with torch.no_grad():
        return model(input_ids=sample_input()).logits


def load_adapter_logits(base_dir: str | Path, adapter_dir: str | Path):
    """Logits of ``PeftModel.from_pretrained(base, adapter)`` on ``sample_input()``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    model.eval()
    with torch.no_grad():
        return model(input_ids=sample_input()).logits


def make_dataset(path: str | Path, rows: int = 64, seed: int = 0) -> Path:
    """A prompt/completion JSONL dataset."""
    rng = random.Random(seed)
    path = Path(path)
    with path.open("w") as fh:
        for line in corpus(rows, seed):
            words = line.split()
            cut = rng.randint(1, len(words) - 1)
            fh.write(json.dumps({"prompt": " ".join(words[:cut]), "completion": " " + " ".join(words[cut:])}) + "\n")
    return path
