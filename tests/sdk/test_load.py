"""``Hub.load`` with the real libraries: a tiny Llama and a LoRA on it, pushed to the
fake hub, come back as a ``PeftModel`` giving the same logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow


def test_load_gives_the_adapter_on_its_base_with_identical_logits(tmp_path, make_hub, fake_hub, monkeypatch):
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
    base_version = hub.push(tmp_path / "base", "acme/llama-tiny", kind="model")
    hub.push(tmp_path / "adapter", "acme/bot", base_model="acme/llama-tiny")

    real = fake_hub._version_json

    def with_base(repo_id, v, **kw):  # the fake records no lineage; the real hub does
        out = real(repo_id, v, **kw)
        if repo_id == "acme/bot":
            out["base_model"] = {"repo": "acme/llama-tiny", "number": 1, "digest": base_version.digest}
        return out

    monkeypatch.setattr(fake_hub, "_version_json", with_base)

    model = hub.load("acme/bot")
    assert isinstance(model, peft.PeftModel)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
        assert not torch.allclose(plain, expected)  # the adapter does change the output

    reloaded_base = hub.load("acme/llama-tiny", torch_dtype=torch.bfloat16)
    assert isinstance(reloaded_base, transformers.LlamaForCausalLM)
    assert reloaded_base.dtype == torch.bfloat16
