"""The streaming merge against peft: merged logits equal the adapter's, merged tensors equal merge_and_unload's.

Every base and adapter is made here, offline: tiny random-init Llama and GPT-2 models and peft adapters trained
a few steps (so lora_B and the IA3 vectors are no longer their identity init).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model  # noqa: E402
from peft.utils import merge_utils  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

from examples import tiny  # noqa: E402
from pefthub_worker.merging import MergeError, merge, tensor_seed  # noqa: E402

LOGITS_ATOL = 1e-5
TENSOR_ATOL = 1e-6


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("merging")


@pytest.fixture(scope="module")
def llama(work) -> Path:
    return tiny.make_tiny_llama(work / "llama")


@pytest.fixture(scope="module")
def gpt2(work) -> Path:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, bos_token_id=1, eos_token_id=2))
    with torch.no_grad():  # GPT-2 starts its biases at zero: give them values, so merges that scale biases show
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.02)
    model.save_pretrained(work / "gpt2")
    return work / "gpt2"


@pytest.fixture(scope="module")
def lora(work, llama) -> Path:
    tiny.train_lora(llama, work / "lora", steps=4)
    return work / "lora"


def train(base: Path, out: Path, config, *, steps: int = 4, seed: int = 0) -> Path:
    """``tiny.train_lora`` for any peft config: a few AdamW steps on random tokens, then save_pretrained."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tiny.sample_input(seed + 1, 32)
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as fh:
            out.update({name: fh.get_tensor(name) for name in fh.keys()})  # noqa: SIM118 (safe_open is not a dict)
    return out


def logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=tiny.sample_input()).logits


def assert_matches_peft(base: Path, adapter: Path, merged: Path) -> None:
    """Merged logits = PeftModel logits (1e-5); merged tensors = merge_and_unload() tensors (1e-6)."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        expected_logits = model(input_ids=tiny.sample_input()).logits
    reference = model.merge_and_unload().state_dict()
    got, original = tensors(merged), tensors(base)
    assert got.keys() == original.keys()
    changed = [name for name in got if not torch.equal(got[name], original[name])]
    assert changed, "the merge changed nothing: was the adapter trained?"
    worst = max((got[name] - reference[name]).abs().max().item() for name in got)
    assert worst <= TENSOR_ATOL, f"merged tensors differ from merge_and_unload() by {worst}"
    assert (logits(merged) - expected_logits).abs().max().item() <= LOGITS_ATOL


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), "all-linear"])
def test_lora_merge_equals_peft(work, llama, targets):
    adapter = work / f"lora-{len(targets)}"
    train(llama, adapter, LoraConfig(r=8, lora_alpha=16, target_modules=targets if isinstance(targets, str) else list(targets)))
    result = merge(base_dir=llama, adapters=[(adapter, 1.0)], output_dir=work / f"merged-lora-{len(targets)}")
    assert_matches_peft(llama, adapter, result.output_dir)
    assert result.merged_modules == (4 if len(targets) == 2 else 14)
    assert result.parameters == sum(t.numel() for t in tensors(llama).values())
    assert json.loads((result.output_dir / "config.json").read_text())["dtype"] == "float32"
    assert {"tokenizer.json", "generation_config.json"} <= {p.name for p in result.output_dir.iterdir()}


def test_rslora_rank_and_alpha_patterns_and_modules_to_save(work, llama):
    config = LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj"],
                        rank_pattern={"v_proj": 4, "layers.1.self_attn.q_proj": 2}, alpha_pattern={"o_proj": 3},
                        modules_to_save=["lm_head"])
    adapter = train(llama, work / "rslora", config)
    result = merge(base_dir=llama, adapters=[(adapter, 1.0)], output_dir=work / "merged-rslora")
    assert_matches_peft(llama, adapter, result.output_dir)


def test_dora_merge_equals_peft(work, llama):
    adapter = work / "dora"
    tiny.train_lora(llama, adapter, steps=4, target_modules=("q_proj", "v_proj", "down_proj", "embed_tokens"), use_dora=True)
    result = merge(base_dir=llama, adapters=[(adapter, 1.0)], output_dir=work / "merged-dora")
    assert_matches_peft(llama, adapter, result.output_dir)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_ia3_merge_equals_peft(work, request, model):
    # Feedforward modules scale input features, the others output features (and their bias: GPT-2 has biases).
    base = request.getfixturevalue(model)
    if model == "llama":
        targets, feedforward = ["k_proj", "v_proj", "down_proj"], ["down_proj"]
    else:
        targets, feedforward = ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]
    adapter = train(base, work / f"ia3-{model}", IA3Config(target_modules=targets, feedforward_modules=feedforward))
    result = merge(base_dir=base, adapters=[(adapter, 1.0)], output_dir=work / f"merged-ia3-{model}")
    assert_matches_peft(base, adapter, result.output_dir)


@pytest.mark.parametrize("dora", [False, True])
def test_gpt2_conv1d_lora_equals_peft(work, gpt2, dora):
    # Conv1D stores weights (in, out): fan_in_fan_out; attention's c_proj is square, so only the config can tell.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                        use_dora=dora, lora_bias=not dora)
    adapter = train(gpt2, work / f"gpt2-lora-{dora}", config)
    result = merge(base_dir=gpt2, adapters=[(adapter, 1.0)], output_dir=work / f"merged-gpt2-{dora}")
    assert_matches_peft(gpt2, adapter, result.output_dir)


def dense_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """base tensor name -> lora_B @ lora_A * alpha / r, straight from the adapter file (plain LoRA, nn.Linear)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    saved = tensors(adapter)
    out = {}
    for key, a in saved.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = saved[key.replace("lora_A", "lora_B")]
            out[f"{module}.weight"] = b @ a * (config["lora_alpha"] / config["r"])
    return out


@pytest.fixture(scope="module")
def second_lora(work, llama) -> Path:
    tiny.train_lora(llama, work / "lora-b", steps=4, seed=1)
    return work / "lora-b"


def test_two_adapters_linear_is_the_weighted_sum_of_deltas(work, llama, lora):
    other = work / "lora-qo"
    tiny.train_lora(llama, other, steps=4, seed=2, target_modules=("q_proj", "o_proj"))  # overlaps `lora` on q_proj only
    result = merge(base_dir=llama, adapters=[(lora, 0.7), (other, 0.3)], output_dir=work / "merged-linear")
    got, base = tensors(result.output_dir), tensors(llama)
    first, second = dense_deltas(lora), dense_deltas(other)
    assert set(first) | set(second) == {n for n in got if not torch.equal(got[n], base[n])}
    for name in got:
        zero = torch.zeros_like(base[name])
        expected = base[name] + 0.7 * first.get(name, zero) + 0.3 * second.get(name, zero)
        assert (got[name] - expected).abs().max().item() <= TENSOR_ATOL, name


@pytest.mark.parametrize("combination", ["ties", "dare_linear", "dare_ties"])
def test_ties_and_dare_match_peft_merge_utils(work, llama, lora, second_lora, combination):
    weights, density, seed = [0.6, 0.4], 0.5, 3
    result = merge(base_dir=llama, adapters=[(lora, weights[0]), (second_lora, weights[1])],
                   output_dir=work / f"merged-{combination}", combination=combination, density=density, seed=seed)
    got, base = tensors(result.output_dir), tensors(llama)
    first, second = dense_deltas(lora), dense_deltas(second_lora)
    assert first.keys() == second.keys()
    for name in first:
        torch.manual_seed(tensor_seed(seed, name))  # merge_utils draws DARE's masks from the global generator
        combined = getattr(merge_utils, combination)([first[name], second[name]], torch.tensor(weights), density)
        assert (got[name] - (base[name] + combined)).abs().max().item() <= TENSOR_ATOL, name
    untouched = [n for n in got if n not in first]
    assert all(torch.equal(got[n], base[n]) for n in untouched)


def test_sharded_base_keeps_its_layout(work, llama, lora):
    sharded = work / "llama-sharded"
    AutoModelForCausalLM.from_pretrained(llama).save_pretrained(sharded, max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 3
    events = []
    result = merge(base_dir=sharded, adapters=[(lora, 1.0)], output_dir=work / "merged-sharded",
                   on_event=lambda kind, data: events.append((kind, data)))
    assert sorted(p.name for p in result.output_dir.glob("*.safetensors")) == shards
    index = json.loads((result.output_dir / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors(sharded).values())
    assert [d for kind, d in events if kind == "metric"] == [{"step": i, "total_steps": len(shards)} for i in range(1, len(shards) + 1)]
    assert sum(kind == "log" for kind, _ in events) == len(shards)
    assert_matches_peft(llama, lora, result.output_dir)


def test_base_saved_without_the_model_prefix(work, llama, lora):
    # A base saved from LlamaModel has `layers.0...`; the adapter, trained on LlamaForCausalLM, says `model.layers.0...`.
    bare = work / "llama-bare"
    bare.mkdir()
    save_file({k.removeprefix("model."): t for k, t in tensors(llama).items()}, bare / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(llama / "config.json", bare / "config.json")
    got = tensors(merge(base_dir=bare, adapters=[(lora, 1.0)], output_dir=work / "merged-bare").output_dir)
    expected = tensors(merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "merged-prefixed").output_dir)
    assert got.keys() == {k.removeprefix("model.") for k in expected}
    assert all(torch.equal(got[k.removeprefix("model.")], t) for k, t in expected.items())
    assert any(not torch.equal(got[k], t) for k, t in tensors(bare).items())


def test_output_dir_must_be_new_or_empty(work, llama, lora):
    (work / "empty").mkdir()
    assert merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "empty").output_dir == work / "empty"
    assert (work / "empty" / "model.safetensors").is_file()
    with pytest.raises(MergeError, match="exists and is not empty"):
        merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "empty")


def test_bfloat16_output_loads_and_stays_close(work, llama, lora):
    result = merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "merged-bf16", dtype="bfloat16")
    assert json.loads((result.output_dir / "config.json").read_text())["dtype"] == "bfloat16"
    got, exact = tensors(result.output_dir), tensors(merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "m32").output_dir)
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    assert max((got[n].float() - exact[n]).abs().max().item() for n in got) <= 1e-2
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert model.dtype == torch.bfloat16
    assert (logits(result.output_dir) - logits(work / "m32")).abs().max().item() <= 1e-2
    # A bfloat16 base: read, merged in float32, written in the dtype asked for.
    AutoModelForCausalLM.from_pretrained(llama, dtype=torch.bfloat16).save_pretrained(work / "llama-bf16")
    again = tensors(merge(base_dir=work / "llama-bf16", adapters=[(lora, 1.0)], output_dir=work / "m-bf16-32").output_dir)
    assert {t.dtype for t in again.values()} == {torch.float32}
    assert max((again[n] - exact[n]).abs().max().item() for n in again) <= 1e-2


def test_prefix_tuning_is_refused(work, llama):
    adapter = work / "prefix"
    get_peft_model(AutoModelForCausalLM.from_pretrained(llama), PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
                   ).save_pretrained(adapter)
    with pytest.raises(MergeError, match=r"prefix tuning.*cannot be merged") as excinfo:
        merge(base_dir=llama, adapters=[(adapter, 1.0)], output_dir=work / "merged-prefix")
    assert str(adapter) in str(excinfo.value)
    assert not (work / "merged-prefix").exists()


def test_refusals_name_the_problem(work, llama, gpt2, lora):
    gpt2_adapter = train(gpt2, work / "gpt2-on-llama", LoraConfig(r=2, target_modules=["c_attn"]), steps=1)
    with pytest.raises(MergeError, match=r"changes `transformer\.h\.0\.attn\.c_attn` but the base has no tensor"):
        merge(base_dir=llama, adapters=[(gpt2_adapter, 1.0)], output_dir=work / "never")
    with pytest.raises(MergeError, match="DoRA: it can only be merged alone"):
        merge(base_dir=llama, adapters=[(lora, 0.5), (work / "dora", 0.5)], output_dir=work / "never")
    with pytest.raises(MergeError, match="combination `mean` is unknown"):
        merge(base_dir=llama, adapters=[(lora, 1.0)], output_dir=work / "never", combination="mean")
    quantized = work / "llama-4bit"
    quantized.mkdir()
    (quantized / "model.safetensors").write_bytes((llama / "model.safetensors").read_bytes())
    config = json.loads((llama / "config.json").read_text()) | {"quantization_config": {"quant_method": "bitsandbytes"}}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"quantized.*not a 4-bit one"):
        merge(base_dir=quantized, adapters=[(lora, 1.0)], output_dir=work / "never")
    assert not (work / "never").exists()


def test_failure_mid_merge_leaves_no_output(work, llama, lora):
    sharded = work / "llama-sharded-2"
    AutoModelForCausalLM.from_pretrained(llama).save_pretrained(sharded, max_shard_size="200KB")
    parent = work / "fail"
    parent.mkdir()

    def stop_after_first_shard(kind: str, data: dict) -> None:
        if kind == "metric" and data["step"] == 1:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        merge(base_dir=sharded, adapters=[(lora, 1.0)], output_dir=parent / "merged", on_event=stop_after_first_shard)
    assert list(parent.iterdir()) == []  # neither output_dir nor the temporary folder
