"""Job specs (pefthub.protocol.specs): every bad value is a SpecError naming its field; to_dict round-trips."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from pefthub.protocol.errors import SpecError
from pefthub.protocol.jobs import QUEUES
from pefthub.protocol.peft import METHODS, PEFT_MERGEABLE_TYPES
from pefthub.protocol.specs import (
    COMBINATIONS,
    DTYPES,
    AdapterWeight,
    MergeSpec,
    TrainHyperparameters,
    TrainSpec,
    check_eval_metrics,
    parse_job_request,
    spec_from_dict,
)

TRAIN = {"type": "train", "base_model": "acme/llama-tiny@2", "dataset": "acme/support-data", "output": "acme/support-bot"}
MERGE = {"type": "merge", "adapters": [{"ref": "acme/bot@3", "weight": 1.0}], "output": "acme/bot-merged"}


def error(call, *args, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        call(*args, **kwargs)
    return info.value


def test_constants():
    assert METHODS == ("lora", "qlora", "dora", "ia3", "prefix_tuning", "prompt_tuning")
    assert COMBINATIONS == ("linear", "ties", "dare_linear", "dare_ties")
    assert DTYPES == ("float32", "bfloat16", "float16")
    assert QUEUES == ("gpu", "cpu")
    assert {"LORA", "IA3", "ADALORA", "LOHA", "LOKR"} <= PEFT_MERGEABLE_TYPES
    assert not {"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "ADAPTION_PROMPT"} & PEFT_MERGEABLE_TYPES


def test_spec_error_is_a_value_error_whose_str_is_the_message():
    exc = SpecError("hyperparameters.r", "hyperparameters.r must be an integer > 0, got 0")
    assert isinstance(exc, ValueError)
    assert (exc.field, str(exc)) == ("hyperparameters.r", exc.message)


def test_defaults_resolve_lora_alpha_and_every_field_has_help():
    hp = TrainHyperparameters()
    resolved = hp.to_dict()
    assert resolved["r"] == 16 and resolved["lora_alpha"] == 32 and hp.lora_alpha is None
    assert resolved["learning_rate"] == 2e-4 and resolved["max_steps"] is None and resolved["eval_split"] == 0.0
    assert set(resolved) == {f.name for f in fields(TrainHyperparameters)}
    assert all(f.metadata.get("help") for f in fields(TrainHyperparameters))
    assert TrainHyperparameters.from_dict({"r": 8}, method="lora").to_dict()["lora_alpha"] == 16
    assert TrainHyperparameters.from_dict({"r": 8, "lora_alpha": 8}, method="lora").lora_alpha_resolved == 8


@pytest.mark.parametrize(("key", "value", "says"), [
    ("r", 0, "hyperparameters.r must be an integer > 0"),
    ("r", "8", "got '8'"),
    ("r", True, "got True"),  # a bool is not an int
    ("r", 8.0, "integer"),
    ("lora_alpha", 0, "lora_alpha must be a number > 0"),
    ("lora_dropout", 1.0, "0 <= x < 1"),
    ("epochs", 0, "epochs must be a number > 0"),
    ("max_steps", 0, "max_steps must be an integer > 0"),
    ("learning_rate", float("nan"), "learning_rate"),
    ("learning_rate", -1e-3, "0 < x <= 10"),
    ("batch_size", 0, "batch_size"),
    ("gradient_accumulation_steps", 1.5, "gradient_accumulation_steps"),
    ("max_seq_length", 4, "max_seq_length must be an integer >= 8"),
    ("warmup_steps", -1, "warmup_steps"),
    ("seed", -1, "seed"),
    ("eval_split", 0.7, "hyperparameters.eval_split must be a number with 0 <= x < 0.5, got 0.7"),
    ("eval_split", 0.5, "eval_split"),
    ("gradient_checkpointing", 1, "true or false"),
    ("logging_steps", 0, "logging_steps"),
    ("target_modules", [], "must not be an empty list"),
    ("target_modules", ["q_proj", ""], "target_modules[1]"),
    ("target_modules", "(unclosed", "not a valid regular expression"),
    ("target_modules", 3, "list of module names"),
    ("dataset_file", "../secrets.jsonl", "relative path to a .jsonl file"),
    ("dataset_file", "data/train.csv", ".jsonl"),
])
def test_bad_hyperparameters_name_the_field_and_the_rule(key, value, says):
    exc = error(TrainHyperparameters.from_dict, {key: value}, method="lora")
    assert exc.field == f"hyperparameters.{key}"
    assert says in exc.message


def test_r_zero_message_names_field_rule_and_value():
    exc = error(TrainHyperparameters.from_dict, {"r": 0}, method="lora")
    assert exc.message.startswith("hyperparameters.r must be an integer > 0") and exc.message.endswith("got 0")


@pytest.mark.parametrize(("key", "message"), [
    ("learnin_rate", "unknown hyperparameter `learnin_rate`; did you mean `learning_rate`?"),
    ("Learning_Rate", "unknown hyperparameter `Learning_Rate`; did you mean `learning_rate`?"),
    ("lora_aplha", "unknown hyperparameter `lora_aplha`; did you mean `lora_alpha`?"),
    ("max_step", "unknown hyperparameter `max_step`; did you mean `max_steps`?"),
    # the names peft and transformers' TrainingArguments give them
    ("rank", "unknown hyperparameter `rank`; did you mean `r`?"),
    ("num_train_epochs", "unknown hyperparameter `num_train_epochs`; did you mean `epochs`?"),
    ("per_device_train_batch_size", "unknown hyperparameter `per_device_train_batch_size`; did you mean `batch_size`?"),
])
def test_unknown_hyperparameter_suggests_the_one_meant(key, message):
    exc = error(TrainHyperparameters.from_dict, {key: 8}, method="lora")
    assert exc.field == f"hyperparameters.{key}" and exc.message == message


def test_unknown_key_with_nothing_close_lists_the_allowed_ones():
    exc = error(TrainHyperparameters.from_dict, {"zzz": 8}, method="lora")
    assert exc.message.startswith("unknown hyperparameter `zzz`; use one of: r, lora_alpha, lora_dropout, target_modules,")
    exc = error(spec_from_dict, {"type": "train", "bse_model": "acme/base"})
    assert (exc.field, exc.message) == ("bse_model", "unknown key `bse_model`; did you mean `base_model`?")
    exc = error(spec_from_dict, {"type": "merge", "output": "acme/m", "adapters": [{"ref": "acme/a", "wieght": 1}]})
    assert (exc.field, exc.message) == ("adapters[0].wieght", "unknown key `wieght` in adapters[0]; did you mean `weight`?")


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], r".*\.(q|v)_proj", "all-linear", None])
def test_target_module_forms(targets):
    hp = TrainHyperparameters.from_dict({"target_modules": targets}, method="lora")
    assert hp.to_dict()["target_modules"] == targets


def test_integral_floats_become_floats_and_ints_are_accepted_for_float_fields():
    hp = TrainHyperparameters.from_dict({"epochs": 2, "learning_rate": 1, "eval_split": 0}, method="lora")
    assert (hp.epochs, hp.learning_rate, hp.eval_split) == (2.0, 1.0, 0.0)


@pytest.mark.parametrize(("method", "key", "value"), [
    ("lora", "num_virtual_tokens", 8),
    ("ia3", "r", 8),
    ("ia3", "lora_alpha", 64),
    ("prompt_tuning", "target_modules", ["q_proj"]),
    ("prefix_tuning", "lora_dropout", 0.1),
])
def test_options_the_method_would_ignore_are_refused(method, key, value):
    exc = error(TrainHyperparameters.from_dict, {key: value}, method=method)
    assert exc.field == f"hyperparameters.{key}" and method in exc.message


def test_prefix_tuning_refuses_gradient_checkpointing():
    exc = error(TrainHyperparameters.from_dict, {"gradient_checkpointing": True}, method="prefix_tuning")
    assert exc.field == "hyperparameters.gradient_checkpointing"


def test_unknown_method():
    exc = error(TrainHyperparameters.from_dict, {}, method="adapter")
    assert exc.field == "method" and "lora, qlora" in exc.message
    assert error(TrainSpec.from_dict, {**TRAIN, "method": "houlsby"}).field == "method"


@pytest.mark.parametrize("method", METHODS)
def test_train_spec_round_trips_for_every_method(method):
    spec = spec_from_dict({**TRAIN, "method": method, "aliases": ["staging"], "message": "first try"})
    assert isinstance(spec, TrainSpec)
    data = spec.to_dict()
    assert data["type"] == "train" and data["method"] == method and data["hyperparameters"]["lora_alpha"] == 32
    again = spec_from_dict(data)
    assert again.to_dict() == data


def test_train_spec_defaults_and_type():
    spec = TrainSpec.from_dict({k: v for k, v in TRAIN.items() if k != "type"})
    assert (spec.method, spec.aliases, spec.message) == ("lora", [], "")
    assert spec.hyperparameters == TrainHyperparameters()
    assert error(TrainSpec.from_dict, {**TRAIN, "type": "merge"}).field == "type"


@pytest.mark.parametrize(("change", "field"), [
    ({"base_model": None}, "base_model"),
    ({"base_model": "llama-tiny"}, "base_model"),
    ({"dataset": "acme/data@not an alias"}, "dataset"),
    ({"dataset": 3}, "dataset"),
    ({"output": "acme/bot@3"}, "output"),
    ({"aliases": ["prod", "1"]}, "aliases[1]"),
    ({"aliases": ["latest"]}, "aliases[0]"),
    ({"aliases": "prod"}, "aliases"),
    ({"message": 5}, "message"),
    ({"hyperparameters": {"r": 0}}, "hyperparameters.r"),
    ({"hyperparameters": [8]}, "hyperparameters"),
    ({"epochs": 3}, "epochs"),  # hyperparameters belong under "hyperparameters"
])
def test_bad_train_specs_name_the_field(change, field):
    assert error(spec_from_dict, {**TRAIN, **change}).field == field


def test_refs_with_revisions_are_accepted_for_inputs():
    for rev in ("3", "prod", "latest", "sha256:" + "a" * 64):
        spec = TrainSpec.from_dict({**TRAIN, "base_model": f"acme/llama-tiny@{rev}"})
        assert spec.base_model == f"acme/llama-tiny@{rev}"


def test_merge_spec_round_trips_and_accepts_ref_strings():
    spec = spec_from_dict({"type": "merge", "adapters": ["acme/bot@3", {"ref": "acme/sql@1", "weight": -0.5}],
                           "output": "acme/merged", "combination": "dare_ties", "density": 0.2, "dtype": "bfloat16"})
    assert isinstance(spec, MergeSpec)
    assert spec.adapters == [AdapterWeight("acme/bot@3", 1.0), AdapterWeight("acme/sql@1", -0.5)]
    data = spec.to_dict()
    assert data["type"] == "merge" and data["adapters"][0] == {"ref": "acme/bot@3", "weight": 1.0}
    assert spec_from_dict(data).to_dict() == data
    assert MergeSpec.from_dict(MERGE).to_dict()["combination"] == "linear"


@pytest.mark.parametrize(("change", "field"), [
    ({"adapters": []}, "adapters"),
    ({"adapters": None}, "adapters"),
    ({"adapters": [{"ref": "acme/bot", "weight": math.inf}]}, "adapters[0].weight"),
    ({"adapters": [{"ref": "acme/bot", "weight": "1"}]}, "adapters[0].weight"),
    ({"adapters": [{"ref": "acme/bot", "weight": True}]}, "adapters[0].weight"),
    ({"adapters": [{"ref": "acme/bot", "scale": 2}]}, "adapters[0].scale"),
    ({"adapters": [{"ref": "bot"}]}, "adapters[0].ref"),
    ({"adapters": ["acme/bot@2", "acme/bot@2"]}, "adapters[1].ref"),
    ({"combination": "svd"}, "combination"),
    ({"combination": "ties", "density": 0}, "density"),
    ({"combination": "ties", "density": 1.5}, "density"),
    ({"density": 0.3}, "density"),  # linear merges take no density
    ({"dtype": "int8"}, "dtype"),
    ({"output": "acme/merged@1"}, "output"),
    ({"method": "lora"}, "method"),
])
def test_bad_merge_specs_name_the_field(change, field):
    assert error(spec_from_dict, {**MERGE, **change}).field == field


@pytest.mark.parametrize("data", [{"base_model": "a/b"}, {"type": "evaluate"}, None, ["train"]])
def test_spec_from_dict_needs_a_known_type(data):
    exc = error(spec_from_dict, data)
    assert exc.field in ("type", "spec")


EVAL = {"type": "eval", "adapter": "acme/bot@3", "dataset": "acme/heldout"}


def test_an_eval_spec_has_bounded_defaults_and_round_trips():
    request = parse_job_request(EVAL)
    assert request.type == "eval" and request.queue == "cpu"
    assert request.spec.to_dict() == {**EVAL, "dataset_file": None, "max_rows": 1000, "max_new_tokens": 64,
                                      "max_seq_length": 512, "batch_size": 8}
    assert spec_from_dict(request.spec.to_dict()) == request.spec


@pytest.mark.parametrize(("change", "field"), [
    ({"adapter": "not a ref"}, "adapter"),
    ({"dataset": None}, "dataset"),
    ({"max_new_tokens": 1025}, "max_new_tokens"),
    ({"max_rows": 0}, "max_rows"),
    ({"batch_size": True}, "batch_size"),
    ({"dataset_file": "data.csv"}, "dataset_file"),
    ({"output": "acme/x"}, "output"),
])
def test_bad_eval_specs_name_the_field(change, field):
    assert error(spec_from_dict, {**EVAL, **change}).field == field


@pytest.mark.parametrize(("metrics", "field"), [
    ({}, "metrics"), ([1.0], "metrics"), ({"loss": float("nan")}, "metrics.loss"), ({"loss": None}, "metrics.loss"),
    ({"1loss": 1.0}, "metrics"), ({"x" * 65: 1.0}, "metrics"),
])
def test_eval_metrics_are_a_few_finite_numbers_under_snake_case_names(metrics, field):
    assert error(check_eval_metrics, metrics).field == field
    assert check_eval_metrics({"loss": 1.5, "rows": 3}) == {"loss": 1.5, "rows": 3}
