"""Sequence packing: packed micro-batches train exactly as the same rows unpacked, on a tiny Llama and a tiny GPT-2.

Packed rows carry per-row position_ids and no attention_mask; transformers builds the
block-diagonal causal mask from them (eager and sdpa). These tests compare numbers: the
loss at step 0, the LoRA gradients of one batch, the logits of a row beside a changed one.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from examples import tiny
from pefthub.protocol.errors import SpecError
from pefthub.protocol.specs import TrainHyperparameters
from pefthub_worker.training import config as cfg
from pefthub_worker.training import data, recipe, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEQ = 64


def _make_tiny_gpt2(out: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # no dropout in the base, so two forward passes of the same rows are comparable number for number
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=256, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    tiny.make_tokenizer(512).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packing")
    return {"llama": tiny.make_tiny_llama(root / "llama"), "gpt2": _make_tiny_gpt2(root / "gpt2")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny.make_dataset(tmp_path_factory.mktemp("data") / "train.jsonl", rows=64)


@pytest.fixture(scope="module")
def examples(bases, dataset) -> list[data.Example]:
    from transformers import AutoTokenizer

    rows, fmt = data.read_jsonl(dataset)
    tokenizer = AutoTokenizer.from_pretrained(bases["llama"])
    return data.tokenize(rows, fmt, tokenizer, max_seq_length=SEQ, name=dataset.name)[0]


def _lora_model(base: Path, attention: str):
    """The recipe's own base loading (use_cache off: with a cache transformers would not look for packed rows)."""
    from peft import get_peft_model
    from transformers import AutoConfig

    hp = TrainHyperparameters.from_dict({"r": 4, "lora_dropout": 0.0}, method="lora")
    model_type = AutoConfig.from_pretrained(base).model_type
    model, _ = recipe._load_base(base, "lora", hp, torch.device("cpu"), packing=True)
    model.set_attn_implementation(attention)
    torch.manual_seed(0)
    model = get_peft_model(model, cfg.peft_config("lora", hp, cfg.resolve_target_modules(hp, "lora", model_type), model_type))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero: perturb it so lora_A gets a gradient too
    model.train()
    return model


def _loss_and_grads(model, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return float(out.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


# --- packing the rows --------------------------------------------------------------------


def test_first_fit_decreasing_fills_bins_without_splitting_a_row_and_its_count_ignores_the_order():
    rng = random.Random(1)
    lengths = [min(64, max(2, int(rng.lognormvariate(3, 0.8)))) for _ in range(500)]
    bins = data.pack(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) <= -(-sum(lengths) * 11 // 640) + 1  # within 10% of the lower bound: first-fit decreasing packs tight
    shuffled = list(range(500))
    rng.shuffle(shuffled)
    assert len(data.pack([lengths[i] for i in shuffled], 64)) == len(bins)
    assert data.pack([5, 3, 60, 4], 64) == [[2, 3], [0, 1]]  # longest first, each into the first bin with room
    with pytest.raises(ValueError, match="longer than the packing capacity"):
        data.pack([65], 64)


def test_packed_stream_is_a_function_of_its_inputs_and_an_epoch_is_one_pass_over_the_rows(examples):
    per_epoch = data.batches_per_epoch(examples, 4, pack_length=SEQ)
    stream = data.micro_batches(examples, 4, 7, pack_length=SEQ)
    again = data.micro_batches(examples, 4, 7, pack_length=SEQ)
    first_epoch = [next(stream) for _ in range(per_epoch)]
    assert {epoch for epoch, _ in first_epoch} == {0} and next(stream)[0] == 1
    rows = [id(e) for _, batch in first_epoch for seq in batch for e in seq]
    assert sorted(rows) == sorted(id(e) for e in examples)  # every row once, none split
    assert all(sum(len(e.input_ids) for e in seq) <= SEQ for _, batch in first_epoch for seq in batch)
    assert all(len(batch) == 4 for _, batch in first_epoch[:-1])
    assert per_epoch < data.batches_per_epoch(examples, 4)  # fewer, fuller micro-batches than one row per sequence
    replay = [next(again) for _ in range(per_epoch + 1)]
    assert [[[e.input_ids for e in seq] for seq in b] for _, b in replay[:per_epoch]] == \
           [[[e.input_ids for e in seq] for seq in b] for _, b in first_epoch]
    other_seed = next(data.micro_batches(examples, 4, 8, pack_length=SEQ))[1]
    assert [[e.input_ids for e in s] for s in other_seed] != [[e.input_ids for e in s] for s in first_epoch[0][1]]


def test_packed_collate_restarts_positions_and_masks_the_first_label_of_every_row():
    a = data.Example([5, 6, 7], [-100, 6, 7])
    b = data.Example([8, 9], [8, 9])
    c = data.Example([10, 11, 12, 13], [10, 11, 12, 13])
    batch = data.collate([[a, b], [c]], pad_id=0, packed=True)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: the positions say where rows end
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 11, 12, 13, -100]]
    with pytest.raises(ValueError, match="one row per sequence"):
        data.collate([[a, b]], pad_id=0)


# --- packed equals unpacked --------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_batch_has_the_unpacked_loss_and_lora_gradients(arch, attention, bases, examples):
    model = _lora_model(bases[arch], attention)
    _, sequences = next(data.micro_batches(examples, 4, 0, pack_length=SEQ))
    rows = [e for seq in sequences for e in seq]
    assert len(rows) > 2 * len(sequences)  # several rows share each packed sequence

    loss, grads = _loss_and_grads(model, data.collate([[e] for e in rows], pad_id=0))
    packed_loss, packed_grads = _loss_and_grads(model, data.collate(sequences, pad_id=0, packed=True))
    # flash-attention's route: every row in one unpadded sequence (run here with the same position_ids on sdpa/eager)
    flat_loss, flat_grads = _loss_and_grads(model, recipe._collate_on(sequences, 0, torch.device("cpu"), packed=True,
                                                                      flat=True))

    assert packed_loss == pytest.approx(loss, abs=1e-5) and flat_loss == pytest.approx(loss, abs=1e-5)
    assert len(grads) >= 4 and all(float(g.abs().max()) > 1e-4 for g in grads.values())  # lora_A and lora_B learn
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(flat_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attention_does_not_cross_rows_in_a_packed_sequence(arch, bases):
    model = _lora_model(bases[arch], "sdpa").eval()
    first, second = data.Example(list(range(10, 30)), list(range(10, 30))), data.Example(list(range(40, 52)), list(range(40, 52)))
    changed = data.Example(list(range(100, 120)), list(range(100, 120)))
    with torch.no_grad():
        before = model(**data.collate([[first, second]], pad_id=0, packed=True)).logits[0]
        after = model(**data.collate([[changed, second]], pad_id=0, packed=True)).logits[0]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    assert float((before[:20] - after[:20]).abs().max()) > 0.01  # the first row's own logits did change
    torch.testing.assert_close(after[20:], before[20:], rtol=0, atol=1e-5)  # the second row's did not
    torch.testing.assert_close(before[20:], alone, rtol=0, atol=1e-5)  # and equal the row run on its own


# --- the recipe --------------------------------------------------------------------------


def test_packed_training_learns_in_fewer_steps_per_epoch_and_counts_only_real_tokens(bases, dataset, tmp_path):
    events: dict[str, list] = {"packed": [], "unpacked": []}
    results = {}
    for name, packing in (("packed", None), ("unpacked", False)):  # None: on by default for prompt/completion rows
        hp = TrainHyperparameters.from_dict({"batch_size": 4, "max_seq_length": SEQ, "learning_rate": 1e-2, "epochs": 3,
                                             "packing": packing}, method="lora")
        results[name] = train(method="lora", hyperparameters=hp, base_dir=bases["llama"], dataset_path=dataset,
                              output_dir=tmp_path / name, callbacks=recipe.Callbacks(
                                  on_event=lambda type, payload, name=name: events[name].append((type, payload))))
    packed, unpacked = results["packed"].metrics, results["unpacked"].metrics
    assert packed["final_loss"] < packed["first_loss"] - 0.3, packed  # in a quarter of the unpacked steps
    assert unpacked["steps"] == 3 * 64 // 4 and packed["steps"] < unpacked["steps"] / 2
    assert packed["train_tokens"] == unpacked["train_tokens"]  # three passes over the same rows, padding not counted
    assert [m["epoch"] for t, m in events["packed"] if t == "metric"][-1] == pytest.approx(3.0)
    assert any(t == "log" and f"packed into sequences of up to {SEQ} tokens" in m["message"] for t, m in events["packed"])
    assert any(t == "log" and "not packed" in m["message"] for t, m in events["unpacked"])


# --- the hyperparameter ------------------------------------------------------------------


def test_packing_defaults_by_row_format_and_an_explicit_choice_wins():
    default, on, off = (TrainHyperparameters.from_dict({"packing": v} if v is not None else {}, method="lora")
                        for v in (None, True, False))
    assert default.packing is None and default.to_dict()["packing"] is None
    assert [default.packs("lora", f) for f in ("text", "prompt_completion", "messages")] == [True, True, False]
    assert on.packs("lora", "messages") and not off.packs("lora", "text")
    assert not default.packs("prompt_tuning", "text")  # virtual tokens take no position ids
    assert "messages" in TrainHyperparameters.describe()["packing"]["help"]


@pytest.mark.parametrize(("method", "value", "says"), [
    ("lora", "yes", "hyperparameters.packing must be true, false or null"),
    ("prompt_tuning", True, "hyperparameters.packing is not supported with prompt_tuning"),
    ("prefix_tuning", True, "hyperparameters.packing is not supported with prefix_tuning"),
])
def test_bad_packing_settings_name_the_field(method, value, says):
    with pytest.raises(SpecError, match=says) as caught:
        TrainHyperparameters.from_dict({"packing": value}, method=method)
    assert caught.value.field == "hyperparameters.packing"
