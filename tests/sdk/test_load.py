"""``Hub.load`` against the real hub: the adapter on the base version the hub recorded for it.

The last test uses the real libraries (a tiny Llama and a LoRA on it, pushed to the hub,
come back as a ``PeftModel`` giving the same logits); the others stand in for
transformers and peft, to see exactly what they are asked to load.
"""

from __future__ import annotations

import re
import sys
import types

import pytest

from pefthub import ValidationError


def test_load_names_the_extra_when_ml_packages_are_missing(make_hub, monkeypatch, proxy):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=re.escape("pefthub[load]")):
        make_hub().load("acme/bot")
    assert proxy.requests() == []


def test_load_puts_the_adapter_on_its_pinned_base(make_hub, seed, monkeypatch):
    base = seed.base()
    adapter = seed.adapter("acme/bot")
    calls: list[tuple] = []
    auto = types.SimpleNamespace(from_pretrained=lambda path, **kw: calls.append(("base", path, kw)) or "MODEL")
    peft_model = types.SimpleNamespace(from_pretrained=lambda model, path: calls.append(("peft", model, path)) or "PEFT")
    monkeypatch.setitem(sys.modules, "transformers",
                        types.SimpleNamespace(__version__="5.1.0", AutoModelForCausalLM=auto))
    monkeypatch.setitem(sys.modules, "peft", types.SimpleNamespace(PeftModel=peft_model))
    hub = make_hub()

    assert hub.load("acme/bot", torch_dtype="bfloat16", device_map="cpu") == "PEFT"
    base_dir = hub.cache.snapshot_dir(base.digest_hex)
    adapter_dir = hub.cache.snapshot_dir(adapter.digest_hex)
    assert calls == [("base", str(base_dir), {"dtype": "bfloat16", "device_map": "cpu"}),
                     ("peft", "MODEL", str(adapter_dir))]
    calls.clear()
    assert hub.load("acme/llama-tiny") == "MODEL" and calls == [("base", str(base_dir), {})]
    seed.push("acme/data", {"train.jsonl": b"{}\n"})
    with pytest.raises(ValidationError, match="only adapters and models"):
        hub.load("acme/data")


@pytest.mark.slow
def test_load_gives_the_adapter_on_its_base_with_identical_logits(tmp_path, make_hub):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, vocab_size=64, tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config).eval()
    base.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    tuned = peft.get_peft_model(base, lora).eval()
    tuned.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        expected = tuned(ids).logits
        plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()(ids).logits
    hub = make_hub()
    hub.push(tmp_path / "base", "acme/llama-tiny", kind="model")
    hub.push(tmp_path / "adapter", "acme/bot", base_model="acme/llama-tiny")  # the hub records the base's version

    model = hub.load("acme/bot")
    assert isinstance(model, peft.PeftModel)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
        assert not torch.allclose(plain, expected)  # the adapter does change the output

    reloaded_base = hub.load("acme/llama-tiny", torch_dtype=torch.bfloat16)
    assert isinstance(reloaded_base, transformers.LlamaForCausalLM)
    assert reloaded_base.dtype == torch.bfloat16
