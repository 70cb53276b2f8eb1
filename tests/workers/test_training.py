"""The training recipe, for real: every method trains a tiny Llama (built here, offline) and reloads exactly.

Runs torch on one thread: the models are tiny, and on a busy 2-core machine OpenMP's
spinning threads make each step up to 100x slower.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from examples import tiny
from pefthub.protocol.errors import SpecError
from pefthub.protocol.specs import TrainHyperparameters
from pefthub_worker.training import Callbacks, Cancelled, DatasetError, QLoRAUnavailable, data, recipe, train
from pefthub_worker.training import config as cfg
from pefthub_worker.training.__main__ import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FAST = {"batch_size": 8, "max_seq_length": 64, "learning_rate": 1e-2}
#: learning rates at which each method visibly learns in a dozen steps on the tiny model
LEARNING_RATES = {"lora": 1e-2, "dora": 1e-2, "qlora": 1e-2, "ia3": 1e-1, "prefix_tuning": 1e-2, "prompt_tuning": 3e-1}


def _bitsandbytes_problem() -> str | None:
    try:
        cfg.require_bitsandbytes(torch.device("cpu"), torch.float32)
    except QLoRAUnavailable as exc:
        return str(exc)
    return None


QLORA_SKIP = _bitsandbytes_problem()
needs_bnb = pytest.mark.skipif(QLORA_SKIP is not None, reason=f"bitsandbytes cannot run 4-bit layers on this CPU: {QLORA_SKIP}")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny.make_tiny_llama(tmp_path_factory.mktemp("training") / "llama-tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny.make_dataset(tmp_path_factory.mktemp("data") / "train.jsonl", rows=64)


def hyper(method: str = "lora", **overrides) -> TrainHyperparameters:
    values = {**FAST, "learning_rate": LEARNING_RATES[method], "max_steps": 12, **overrides}
    if method in ("prefix_tuning", "prompt_tuning"):
        values.setdefault("num_virtual_tokens", 8)
    return TrainHyperparameters.from_dict(values, method=method)


def run(method: str, base: Path, dataset: Path, out: Path, events: list | None = None, **overrides):
    on_event = (lambda type, data: events.append((type, data))) if events is not None else (lambda type, data: None)
    result = train(method=method, hyperparameters=hyper(method, **overrides), base_dir=base, dataset_path=dataset,
                   output_dir=out, callbacks=Callbacks(on_event=on_event), keep_model=True)
    return result, result.model


def load_base(base: Path, *, four_bit: bool = False):
    from transformers import AutoModelForCausalLM

    if not four_bit:
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=cfg.quantization_config(torch.float32),
                                                 dtype=torch.float32, device_map={"": "cpu"})
    cfg.keep_4bit_layers_trainable(model)
    return model


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=tiny.sample_input()).logits


# --- every method ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "peft_type"), [
    ("lora", "LORA"), ("dora", "LORA"), ("ia3", "IA3"), ("prefix_tuning", "PREFIX_TUNING"),
    ("prompt_tuning", "PROMPT_TUNING"), pytest.param("qlora", "LORA", marks=needs_bnb),
])
def test_every_method_learns_and_its_saved_adapter_reloads_exactly(method, peft_type, base, dataset, tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    result, model = run(method, base, dataset, out, eval_split=0.125)

    assert result.output_dir == out and result.peft_type == peft_type
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == peft_type
    metrics = result.metrics
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.01, metrics  # held-out loss, same rows both times
    assert metrics["steps"] == 12 and metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0

    reloaded = PeftModel.from_pretrained(load_base(base, four_bit=method == "qlora"), out)
    assert torch.equal(logits(model), logits(reloaded))
    if method == "qlora":
        assert result.quantization == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                       "bnb_4bit_use_double_quant": True, "compute_dtype": "float32"}
    else:
        assert result.quantization is None


def test_lora_training_loss_goes_down_and_metric_events_follow_the_schedule(base, dataset, tmp_path):
    events: list = []
    result, _ = run("lora", base, dataset, tmp_path / "a", events, max_steps=20, warmup_steps=4, logging_steps=5,
                    packing=False)  # 8 micro-batches of 8 rows per epoch (packed epochs: tests/workers/test_packing.py)
    assert result.metrics["final_loss"] < result.metrics["first_loss"] - 0.2, result.metrics
    metrics = [d for t, d in events if t == "metric"]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    assert all(set(m) == {"step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_second"} for m in metrics)
    assert metrics[-1]["total_steps"] == 20 and metrics[-1]["epoch"] == pytest.approx(20 / 8)
    assert metrics[0]["learning_rate"] == pytest.approx(1e-2)  # step 5 is the first after 4 warmup steps
    assert metrics[1]["learning_rate"] == pytest.approx(1e-2 * (20 - 9) / 16)  # then linear decay to 0
    assert any(t == "log" and "64 rows (prompt_completion)" in d["message"] for t, d in events)


def test_default_targets_are_the_attention_projections_and_ia3_scales_down_proj(base, dataset, tmp_path):
    run("lora", base, dataset, tmp_path / "lora", max_steps=1)
    run("ia3", base, dataset, tmp_path / "ia3", max_steps=1)
    lora = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    ia3 = json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())
    assert sorted(lora["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and lora["lora_alpha"] == 32
    assert sorted(ia3["target_modules"]) == ["down_proj", "k_proj", "v_proj"] and ia3["feedforward_modules"] == ["down_proj"]
    assert cfg.default_target_modules("gpt2", "lora") == ["c_attn"]
    assert cfg.default_target_modules("some_new_arch", "lora") == "all-linear"


def test_same_seed_same_adapter_bytes(base, dataset, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run("lora", base, dataset, tmp_path / name, seed=seed, max_steps=4, eval_split=0.125)
    weights = {n: (tmp_path / n / "adapter_model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]


def test_gradient_accumulation_matches_one_big_batch(base, dataset, tmp_path):
    # unpacked: 64 rows split evenly into micro-batches of 8 or 4, so both runs see the same rows in every step
    # (packed sequences per epoch need not divide evenly; then an epoch ends inside a step of one run only)
    same = {"max_steps": 3, "lora_dropout": 0.0, "packing": False}
    run("lora", base, dataset, tmp_path / "big", batch_size=8, **same)
    run("lora", base, dataset, tmp_path / "acc", batch_size=4, gradient_accumulation_steps=2, **same)
    big, acc = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("big", "acc"))
    for key in big:
        torch.testing.assert_close(big[key], acc[key], rtol=1e-3, atol=1e-5)  # Adam magnifies fp noise in tiny grads


def test_gradient_checkpointing_trains(base, dataset, tmp_path):
    result, _ = run("lora", base, dataset, tmp_path / "a", max_steps=3, gradient_checkpointing=True)
    assert result.metrics["steps"] == 3


# --- QLoRA and the AVX512-BF16 eval-mode repack ---------------------------------------------


@needs_bnb
def test_qlora_lora_weights_still_learn_after_an_eval_pass(base):
    """An eval-mode forward must not stop gradients (bitsandbytes repacks 4-bit weights on AVX512-BF16 CPUs)."""
    from peft import get_peft_model

    def grads_after(eval_first: bool) -> dict:
        torch.manual_seed(0)
        model, _ = recipe._load_base(base, "qlora", hyper("qlora"), torch.device("cpu"))
        torch.manual_seed(0)
        model = get_peft_model(model, cfg.peft_config("qlora", hyper("qlora", lora_dropout=0.0), ["q_proj", "v_proj"], "llama"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # so lora_A gets a gradient too
        if eval_first:
            logits(model)
        model.train()
        batch = tiny.sample_input()
        model(input_ids=batch, labels=batch).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    after_eval, fresh = grads_after(True), grads_after(False)
    assert len(after_eval) == 8 and all(g is not None and g.abs().sum() > 0 for g in after_eval.values())
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad)


@needs_bnb
def test_qlora_with_eval_split_updates_every_lora_weight(base, dataset, tmp_path):
    run("qlora", base, dataset, tmp_path / "a", eval_split=0.125, target_modules=["q_proj", "v_proj"], max_steps=4)
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(lora_b) == 4 and all(v.abs().max() > 0 for v in lora_b.values())  # lora_B starts at zero


def test_qlora_without_a_working_bitsandbytes_says_so(base, dataset, tmp_path, monkeypatch):
    # Mocked: bitsandbytes does run on this CPU, so its failure has to be simulated.
    bnb = pytest.importorskip("bitsandbytes")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bnb.nn, "Linear4bit", broken)
    with pytest.raises(QLoRAUnavailable, match="qlora needs bitsandbytes with a supported device"):
        train(method="qlora", hyperparameters=hyper("qlora"), base_dir=base, dataset_path=dataset, output_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()


# --- data formats ------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def test_prompt_completion_labels_mask_exactly_the_prompt(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the hub stores", "completion": " small weights 12."}])
    rows, fmt = data.read_jsonl(path)
    [example], _ = data.tokenize(rows, fmt, tokenizer, max_seq_length=64, name=path.name)
    n_prompt = len(tokenizer("the hub stores")["input_ids"])
    assert fmt == "prompt_completion" and n_prompt > 0
    assert example.labels[:n_prompt] == [data.IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert tokenizer.decode(example.labels[n_prompt:]) == " small weights 12.</s>"


def test_text_rows_train_on_every_token(base, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": line} for line in tiny.corpus(32)])
    rows, fmt = data.read_jsonl(path)
    examples, _ = data.tokenize(rows, fmt, tokenizer, max_seq_length=64, name=path.name)
    assert fmt == "text" and all(e.labels == e.input_ids for e in examples)
    result = train(method="lora", hyperparameters=hyper(max_steps=3), base_dir=base, dataset_path=path, output_dir=tmp_path / "a")
    assert result.metrics["steps"] == 3


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who stores tokens?"},
        {"role": "assistant", "content": "the hub stores tokens."}, {"role": "user", "content": "and merges?"},
        {"role": "assistant", "content": "the worker merges."}]


def learned_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != data.IGNORE_INDEX])


def test_chat_without_a_template_renders_role_lines_and_learns_assistant_turns(base, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}] * 16)
    rows, fmt = data.read_jsonl(path)
    [example, *_], stats = data.tokenize(rows, fmt, tokenizer, max_seq_length=64, name=path.name)
    assert tokenizer.decode(example.input_ids) == (
        "system: be brief\nuser: who stores tokens?\nassistant: the hub stores tokens.\nuser: and merges?\n"
        "assistant: the worker merges.\n</s>")
    assert learned_text(tokenizer, example) == " the hub stores tokens.\n the worker merges.\n</s>"
    assert stats.chat_rendering == "role: content" and stats.loss_on_all_tokens == 0
    result = train(method="lora", hyperparameters=hyper(max_steps=3), base_dir=base, dataset_path=path, output_dir=tmp_path / "a")
    assert result.metrics["steps"] == 3


def test_chat_with_a_template_learns_the_assistant_turns_and_their_end_tokens(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    chatty = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    chatty.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    rows, fmt = data.read_jsonl(path)
    [example], stats = data.tokenize(rows, fmt, chatty, max_seq_length=128, name=path.name)
    assert stats.chat_rendering == "template" and stats.loss_on_all_tokens == 0
    assert learned_text(chatty, example) == "the hub stores tokens.</s>the worker merges.</s>"


def test_long_prompts_are_truncated_and_rows_with_nothing_to_learn_are_skipped(tokenizer, tmp_path):
    long_prompt = " ".join(tiny.corpus(20))
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt, "completion": " yes."},
                                                 {"prompt": "a", "completion": " short."}])
    rows, fmt = data.read_jsonl(path)
    examples, stats = data.tokenize(rows, fmt, tokenizer, max_seq_length=16, name=path.name)
    assert len(examples) == 1 and (stats.truncated, stats.dropped) == (1, 1)
    with pytest.raises(DatasetError, match="no row has a token to learn from"):
        data.tokenize(rows[:1], fmt, tokenizer, max_seq_length=16, name=path.name)


# --- bad data: found before the model is loaded ------------------------------------------


@pytest.mark.parametrize(("rows", "line", "says"), [
    (['{"text": "a"}', '{"text": "b"}', '{"text": "c"'], 3, "train.jsonl line 3: invalid JSON"),
    ([{"prompt": "a", "completion": " b"}, {"prompt": "c"}], 2,
     "train.jsonl line 2: missing `completion` (rows need `text`, or `prompt` and `completion`, or `messages`)"),
    ([{"text": "a"}, {"id": 7}], 2, "train.jsonl line 2: missing `text`"),
    ([{"text": "a"}, "", {"prompt": "b", "completion": " c"}], 3, "line 3: a `prompt`/`completion` row, but line 1 is a `text` row"),
    ([{"text": "a", "prompt": "b"}], 1, "mixed formats"),
    ([{"text": 5}], 1, "`text` must be a string"),
    (["[1, 2]"], 1, "a row must be a JSON object"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], 1, "no assistant turn"),
    ([{"messages": [{"role": "user"}]}], 1, "`messages[0].content` must be a string"),
])
def test_bad_rows_name_the_file_and_line(rows, line, says, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DatasetError) as info:
        # a base folder that does not exist: the dataset must be refused before any model is read
        train(method="lora", hyperparameters=hyper(), base_dir=tmp_path / "no-model", dataset_path=path,
              output_dir=tmp_path / "out")
    assert info.value.line == line
    assert says in info.value.message and str(info.value) == info.value.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_dataset_is_refused(content, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=r"train\.jsonl is empty") as info:
        data.read_jsonl(path)
    assert info.value.line is None


# --- bad specs ----------------------------------------------------------------------------


def test_a_target_module_the_base_lacks_is_refused_before_training(base, dataset, tmp_path):
    events: list = []
    with pytest.raises(SpecError) as info:
        run("lora", base, dataset, tmp_path / "out", events, target_modules=["q_proj", "nonexistent_proj"])
    assert info.value.field == "hyperparameters.target_modules"
    assert "`nonexistent_proj`" in info.value.message and "q_proj, up_proj, v_proj" in info.value.message
    assert not [e for e in events if e[0] == "metric"] and not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="matches no linear module"):
        run("lora", base, dataset, tmp_path / "out", target_modules=r".*\.attention\.wq")


@pytest.mark.parametrize(("method", "overrides", "field"), [
    ("adapter", {}, "method"),
    ("lora", {"r": 0}, "hyperparameters.r"),
    ("lora", {"r": "8"}, "hyperparameters.r"),
    ("lora", {"epochs": 1, "learning_rate": 0.1, "rank": 8}, "hyperparameters.rank"),
    ("lora", {"eval_split": 0.7}, "hyperparameters.eval_split"),
])
def test_bad_specs_name_the_field(method, overrides, field, base, dataset, tmp_path):
    with pytest.raises(SpecError) as info:
        hp = TrainHyperparameters.from_dict(overrides, method=method)
        train(method=method, hyperparameters=hp, base_dir=base, dataset_path=dataset, output_dir=tmp_path / "out")
    assert info.value.field == field


def test_method_is_checked_by_train_itself(base, dataset, tmp_path):
    with pytest.raises(SpecError) as info:
        train(method="houlsby", hyperparameters=TrainHyperparameters(), base_dir=base, dataset_path=dataset,
              output_dir=tmp_path / "out")
    assert info.value.field == "method"


def test_an_output_folder_with_files_is_refused_up_front(base, dataset, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        train(method="lora", hyperparameters=hyper(), base_dir=base, dataset_path=dataset, output_dir=tmp_path / "out")


# --- cancellation -------------------------------------------------------------------------


def test_should_stop_cancels_within_one_step_and_writes_nothing(base, dataset, tmp_path):
    out = tmp_path / "runs" / "adapter"
    out.mkdir(parents=True)
    steps: list[int] = []

    def on_event(type: str, payload: dict) -> None:
        if type == "metric":
            steps.append(payload["step"])

    with pytest.raises(Cancelled):
        train(method="lora", hyperparameters=hyper(max_steps=50), base_dir=base, dataset_path=dataset, output_dir=out,
              callbacks=Callbacks(on_event=on_event, should_stop=lambda: bool(steps) and steps[-1] >= 2))
    assert steps == [1, 2]
    assert list(out.iterdir()) == [] and list((tmp_path / "runs").iterdir()) == [out]  # no staging folder left


# --- standalone CLI -----------------------------------------------------------------------


def test_cli_prints_events_and_the_result_as_json_lines(base, dataset, tmp_path, capsys):
    code = cli_main(["--base", str(base), "--data", str(dataset), "--out", str(tmp_path / "a"), "--method", "lora",
                     "--set", "r=4", "--set", "max_steps=2", "--set", "batch_size=4", "--set", 'target_modules=["q_proj"]'])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [e["data"]["step"] for e in lines if e["type"] == "metric"] == [1, 2]
    assert lines[-1]["type"] == "result" and lines[-1]["data"]["metrics"]["steps"] == 2
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4


def test_cli_reports_a_bad_setting_with_exit_status_2(base, dataset, tmp_path, capsys):
    code = cli_main(["--base", str(base), "--data", str(dataset), "--out", str(tmp_path / "a"), "--set", "r=0"])
    assert code == 2 and "hyperparameters.r must be an integer > 0" in capsys.readouterr().err
