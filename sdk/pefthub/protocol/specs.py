"""Job specs: what a ``train``, ``merge`` or ``eval`` job asks a worker to do.

One schema, three readers: the SDK checks a spec before sending it, the server
validates it at submit time, the worker reads it back. Pure standard library, so the
server never imports torch and the SDK stays light.

Every check raises :class:`SpecError` naming the bad field (``hyperparameters.r``),
the rule and the value; unknown keys are errors, never silently ignored.

    spec = spec_from_dict({"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/data",
                           "output": "acme/bot", "method": "lora", "hyperparameters": {"r": 8}})
    spec.hyperparameters.lora_alpha_resolved   # 16
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import RefError, SpecError
from .jobs import DEFAULT_QUEUE, EVAL, JOB_TYPES, MERGE, QUEUES, TRAIN
from .limits import DEFAULT_ATTEMPTS, MAX_ATTEMPTS, MAX_MESSAGE_LENGTH
from .manifest import path_problem
from .peft import LORA_METHODS, METHOD_PEFT_TYPES, METHODS, VIRTUAL_TOKEN_METHODS
from .refs import LATEST, check_alias, parse_ref
from .words import with_article

COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties")
DTYPES = ("float32", "bfloat16", "float16")

__all__ = [
    "COMBINATIONS", "DTYPES", "AdapterWeight", "EvalSpec", "JobRequest", "MergeSpec", "SpecError",
    "TrainHyperparameters", "TrainSpec", "check_eval_metrics", "continued_hyperparameters", "parse_job_request",
    "parse_overrides", "spec_from_dict",
]


# --- value checks -------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    ok = _is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        rule = "an integer > 0" if minimum == 1 else f"an integer >= {minimum}"
        if maximum is not None:
            rule += f" and <= {maximum}"
        raise SpecError(name, f"{name} must be {rule}, got {value!r}")
    return value


def _float(name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False,
           high_open: bool = False, rule: str) -> float:
    ok = _is_number(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        raise SpecError(name, f"{name} must be {rule}, got {value!r}")
    return float(value)


def _str(name: str, value: Any, *, max_length: int | None = None) -> str:
    if not isinstance(value, str):
        raise SpecError(name, f"{name} must be a string, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise SpecError(name, f"{name} is too long ({len(value)} characters; at most {max_length})")
    return value


def _ref(name: str, value: Any, *, allow_revision: bool) -> str:
    if value is None:
        raise SpecError(name, f"{name} is required")
    if not isinstance(value, str):
        raise SpecError(name, f"{name} must be a reference string, got {type(value).__name__}")
    try:
        return str(parse_ref(value, field=name, allow_revision=allow_revision))
    except RefError as exc:
        raise SpecError(name, exc.message) from None


def _aliases(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(name, f"{name} must be a list of alias names, got {type(value).__name__}")
    out: list[str] = []
    for i, alias in enumerate(value):
        try:
            check_alias(alias)
        except RefError as exc:
            raise SpecError(f"{name}[{i}]", f"{name}[{i}]: {exc.message}") from None
        if alias == LATEST:
            raise SpecError(f"{name}[{i}]", f"{name}[{i}]: `latest` always names the newest version; it cannot be set")
        if alias not in out:
            out.append(alias)
    return out


def _check_keys(where: str, data: Any, allowed: list[str]) -> dict:
    if not isinstance(data, dict):
        raise SpecError(where or "spec", f"{where or 'the spec'} must be a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise SpecError(f"{where}.{key}" if where else str(key), _unknown_key(where, str(key), allowed))
    return data


#: names other tools give a hyperparameter (peft, transformers' TrainingArguments), and ours
_HYPERPARAMETER_SYNONYMS = {
    "rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "lr": "learning_rate", "steps": "max_steps",
    "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "max_length": "max_seq_length", "warmup": "warmup_steps",
}


def _unknown_key(where: str, key: str, allowed: list[str]) -> str:
    """``unknown hyperparameter `learnin_rate`; did you mean `learning_rate`?``, else the keys allowed."""
    if where == "hyperparameters":
        what = f"unknown hyperparameter `{key}`"
        close = [_HYPERPARAMETER_SYNONYMS[key.lower()]] if key.lower() in _HYPERPARAMETER_SYNONYMS else []
    else:
        what = f"unknown key `{key}`" + (f" in {where}" if where else "")
        close = []
    close = close or difflib.get_close_matches(key.lower(), allowed, n=1)
    return f"{what}; did you mean `{close[0]}`?" if close else f"{what}; use one of: {', '.join(allowed)}"


def _help(text: str) -> dict:
    return {"help": text}


# --- train ---------------------------------------------------------------------------------


@dataclass
class TrainHyperparameters:
    """Training knobs; every field has a default. ``help(TrainHyperparameters)`` or ``describe()`` lists them."""

    r: int = field(default=16, metadata=_help("LoRA rank (lora, qlora, dora)."))
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA scaling numerator; None means 2 * r."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input, 0 <= x < 1."))
    target_modules: list[str] | str | None = field(default=None, metadata=_help(
        "Modules to adapt: a list of names (matched on the module path's last parts), a regex matched against "
        "the full module path, 'all-linear', or None for the architecture's default."))
    epochs: float = field(default=1.0, metadata=_help("Passes over the training rows (fractions allowed)."))
    max_steps: int | None = field(default=None, metadata=_help("Optimizer steps; when set it overrides epochs."))
    learning_rate: float = field(default=2e-4, metadata=_help("Peak AdamW learning rate (linear warmup, linear decay)."))
    batch_size: int = field(default=8, metadata=_help(
        "Rows per micro-batch; with packing, packed sequences (of up to max_seq_length tokens each) per micro-batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    max_seq_length: int = field(default=512, metadata=_help("Tokens per row; longer rows are truncated."))
    warmup_steps: int = field(default=0, metadata=_help("Optimizer steps of linear warmup."))
    seed: int = field(default=0, metadata=_help("Seed for adapter init, shuffling and dropout: same seed, same weights."))
    eval_split: float = field(default=0.0, metadata=_help("Fraction of rows held out for eval_loss, 0 <= x < 0.5."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Trade compute for activation memory."))
    num_virtual_tokens: int = field(default=20, metadata=_help("Virtual tokens (prefix_tuning, prompt_tuning)."))
    dataset_file: str | None = field(default=None, metadata=_help(
        "Which .jsonl file of the dataset version to train on; None means its only (or first) *.jsonl."))
    logging_steps: int = field(default=1, metadata=_help("Emit a metric event every this many optimizer steps."))
    checkpoint_steps: int | None = field(default=None, metadata=_help(
        "Save a resumable checkpoint every this many optimizer steps (and at least every "
        "PEFTHUB_CHECKPOINT_SECONDS); None means four per run. A re-queued job resumes from its last one."))
    packing: bool | None = field(default=None, metadata=_help(
        "Pack whole rows into sequences of up to max_seq_length tokens (no padding; attention and loss stay within "
        "each row, so the result matches unpacked training); None means on for text and prompt/completion rows, off "
        "for messages rows. Not with prefix_tuning or prompt_tuning."))

    def __post_init__(self) -> None:
        self._validate()

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict | None, *, method: str) -> TrainHyperparameters:
        """Build from JSON-like data; unknown keys, wrong types and options that do not apply to ``method`` are errors."""
        _method(method)
        data = _check_keys("hyperparameters", data if data is not None else {}, [f.name for f in fields(cls)])
        hp = cls(**data)
        hp.check_method(method, given=set(data))
        return hp

    def to_dict(self) -> dict:
        """Every field, resolved (``lora_alpha`` filled in)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["lora_alpha"] = self.lora_alpha_resolved
        if isinstance(self.target_modules, list):
            out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def describe(cls) -> dict[str, dict]:
        """``{name: {"default", "help"}}`` for docs and ``--help`` texts."""
        return {f.name: {"default": None if f.default is MISSING else f.default, "help": f.metadata.get("help", "")}
                for f in fields(cls)}

    @property
    def lora_alpha_resolved(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.r

    # -- validation --------------------------------------------------------------------

    def _validate(self) -> None:
        p = "hyperparameters."
        _int(p + "r", self.r, minimum=1, maximum=4096)
        if self.lora_alpha is not None:
            alpha = _float(p + "lora_alpha", self.lora_alpha, low=0, low_open=True, rule="a number > 0 (or null for 2 * r)")
            self.lora_alpha = int(alpha) if alpha.is_integer() else alpha
        self.lora_dropout = _float(p + "lora_dropout", self.lora_dropout, low=0, high=1, high_open=True,
                                   rule="a number with 0 <= x < 1")
        self.target_modules = _target_modules(p + "target_modules", self.target_modules)
        self.epochs = _float(p + "epochs", self.epochs, low=0, low_open=True, high=10_000, rule="a number > 0")
        if self.max_steps is not None:
            _int(p + "max_steps", self.max_steps, minimum=1)
        self.learning_rate = _float(p + "learning_rate", self.learning_rate, low=0, low_open=True, high=10,
                                    rule="a number with 0 < x <= 10")
        _int(p + "batch_size", self.batch_size, minimum=1, maximum=65_536)
        _int(p + "gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1, maximum=65_536)
        _int(p + "max_seq_length", self.max_seq_length, minimum=8, maximum=1_048_576)
        _int(p + "warmup_steps", self.warmup_steps, minimum=0)
        _int(p + "seed", self.seed, minimum=0, maximum=2**32 - 1)
        self.eval_split = _float(p + "eval_split", self.eval_split, low=0, high=0.5, high_open=True,
                                 rule="a number with 0 <= x < 0.5")
        if not isinstance(self.gradient_checkpointing, bool):
            raise SpecError(p + "gradient_checkpointing",
                            f"{p}gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        _int(p + "num_virtual_tokens", self.num_virtual_tokens, minimum=1, maximum=4096)
        if self.dataset_file is not None:
            self.dataset_file = _dataset_file(p + "dataset_file", self.dataset_file)
        _int(p + "logging_steps", self.logging_steps, minimum=1)
        if self.checkpoint_steps is not None:
            _int(p + "checkpoint_steps", self.checkpoint_steps, minimum=1)
        if self.packing is not None and not isinstance(self.packing, bool):
            raise SpecError(p + "packing", f"{p}packing must be true, false or null, got {self.packing!r}")

    def check_method(self, method: str, *, given: set[str] | None = None) -> None:
        """Refuse options set to a non-default value that ``method`` would ignore."""
        _method(method)
        defaults = TrainHyperparameters.__new__(TrainHyperparameters)
        for f in fields(self):
            setattr(defaults, f.name, f.default)
        if method in LORA_METHODS:
            unused = ["num_virtual_tokens"]
        elif method == "ia3":
            unused = ["r", "lora_alpha", "lora_dropout", "num_virtual_tokens"]
        else:
            unused = ["r", "lora_alpha", "lora_dropout", "target_modules"]
        for name in unused:
            value = getattr(self, name)
            default = getattr(defaults, name)
            if name == "lora_alpha":
                ignored = value is None or value == 2 * self.r
            else:
                ignored = value == default
            if not ignored and (given is None or name in given):
                raise SpecError(f"hyperparameters.{name}",
                                f"hyperparameters.{name} does not apply to method {method!r}; remove it")
        if method == "prefix_tuning" and self.gradient_checkpointing:
            raise SpecError("hyperparameters.gradient_checkpointing",
                            "hyperparameters.gradient_checkpointing is not supported with prefix_tuning")
        if method in VIRTUAL_TOKEN_METHODS and self.packing:
            raise SpecError("hyperparameters.packing", f"hyperparameters.packing is not supported with {method} (its "
                                                       "virtual tokens take no position ids); remove it or set it to false")

    def packs(self, method: str, row_format: str) -> bool:
        """Whether rows are packed: ``packing`` when set, else on for ``text`` and ``prompt_completion`` rows."""
        if method in VIRTUAL_TOKEN_METHODS:
            return False
        return self.packing if self.packing is not None else row_format in ("text", "prompt_completion")


def _method(method: Any) -> str:
    if method not in METHODS:
        raise SpecError("method", f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def _target_modules(name: str, value: Any) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise SpecError(name, f"{name} must not be empty (use null for the architecture's default)")
        if value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise SpecError(name, f"{name} is not a valid regular expression ({exc}): {value!r}") from None
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(name, f"{name} must not be an empty list (use null for the architecture's default)")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or item.strip() != item:
                raise SpecError(name, f"{name}[{i}] must be a non-empty module name, got {item!r}")
            if item not in out:
                out.append(item)
        return out
    raise SpecError(name, f"{name} must be a list of module names, a regex string, 'all-linear' or null; "
                          f"got {type(value).__name__}")


def _dataset_file(name: str, value: Any) -> str:
    _str(name, value, max_length=512)
    rule = path_problem(value) or (None if value.endswith(".jsonl") else "it does not end in .jsonl")
    if rule is not None:
        raise SpecError(name, f"{name} must be a relative path to a .jsonl file inside the dataset, "
                              f"got {value!r}: {rule}")
    return value


def _job_fields(data: Any, kind: str, keys: list[str]) -> tuple[dict, dict]:
    """``data`` with its keys checked, and what every job spec has: ``output``, ``aliases``, ``message``."""
    data = _check_keys("", data, keys)
    if data.get("type", kind) != kind:
        raise SpecError("type", f"type must be {kind!r} here, got {data.get('type')!r}")
    return data, {
        "output": _ref("output", data.get("output"), allow_revision=False),
        "aliases": _aliases("aliases", data.get("aliases", [])),
        "message": _str("message", data.get("message", ""), max_length=MAX_MESSAGE_LENGTH),
    }


_TRAIN_KEYS = ["type", "base_model", "dataset", "output", "method", "hyperparameters", "continue_from", "aliases",
               "message"]


@dataclass
class TrainSpec:
    """Train an adapter of ``method`` on ``base_model`` with ``dataset``; push it to ``output``.

    With ``continue_from`` (an adapter reference) training starts from that adapter's
    weights instead of a fresh adapter; :func:`continued_hyperparameters` says what it must share.
    """

    base_model: str
    dataset: str
    output: str
    method: str = "lora"
    hyperparameters: TrainHyperparameters = field(default_factory=TrainHyperparameters)
    continue_from: str | None = None
    aliases: list[str] = field(default_factory=list)
    message: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> TrainSpec:
        data, common = _job_fields(data, TRAIN, _TRAIN_KEYS)
        method = _method(data.get("method", "lora"))
        parent = data.get("continue_from")
        return cls(
            base_model=_ref("base_model", data.get("base_model"), allow_revision=True),
            dataset=_ref("dataset", data.get("dataset"), allow_revision=True),
            method=method,
            hyperparameters=TrainHyperparameters.from_dict(data.get("hyperparameters"), method=method),
            continue_from=None if parent is None else _ref("continue_from", parent, allow_revision=True),
            **common,
        )

    def to_dict(self) -> dict:
        return {
            "type": "train", "base_model": self.base_model, "dataset": self.dataset, "output": self.output,
            "method": self.method, "hyperparameters": self.hyperparameters.to_dict(),
            **({"continue_from": self.continue_from} if self.continue_from else {}),
            "aliases": list(self.aliases), "message": self.message,
        }


# --- continuing an adapter -------------------------------------------------------------------

#: peft's LoraConfig default, for an adapter_config.json that leaves ``lora_alpha`` out
_PEFT_DEFAULT_LORA_ALPHA = 8


def _method_for(adapter: dict) -> tuple[str, ...]:
    """The train methods that continue an adapter with this recorded config (none: the recipe cannot)."""
    peft_type = adapter.get("peft_type")
    if peft_type == "LORA":
        # a QLoRA adapter is a plain LoRA file: lora and qlora continue each other's
        return ("dora",) if adapter.get("use_dora") else ("lora", "qlora")
    return tuple(m for m in METHODS if m not in LORA_METHODS and METHOD_PEFT_TYPES[m] == peft_type)


def _same_targets(given: list[str] | str, recorded: Any) -> bool:
    if isinstance(given, list) and isinstance(recorded, list):
        return set(given) == set(recorded)  # peft saves its target set in no fixed order
    return given == recorded


def continued_hyperparameters(method: str, hp: TrainHyperparameters, given: set[str] | frozenset[str], adapter: dict,
                              *, label: str) -> TrainHyperparameters:
    """The hyperparameters a job continuing the adapter ``label`` (recorded config ``adapter``) trains with.

    ``given``: the hyperparameters the submitter set (null counts as not set). The method must
    train the adapter's peft type (lora and qlora continue a LoRA, as a QLoRA file is a plain
    LoRA file; dora a LoRA with ``use_dora``; ia3, prefix_tuning and prompt_tuning their own);
    what shapes the weights or their scale (``r``, ``lora_alpha``, ``target_modules``,
    ``num_virtual_tokens``) is the adapter's when not given and an error when given otherwise.
    Everything else (learning rate, steps, dropout, seed...) is the job's own.
    """
    peft_type = str(adapter.get("peft_type"))
    methods = _method_for(adapter)
    if not methods:
        raise SpecError("continue_from", f"continue_from `{label}` is {with_article(peft_type)} adapter, which no train "
                                         f"method continues (they train {', '.join(sorted(set(METHOD_PEFT_TYPES.values())))}); "
                                         "train a fresh adapter instead")
    if method not in methods:
        kind = "a DoRA adapter (LORA with use_dora)" if methods == ("dora",) else with_article(peft_type) + " adapter"
        raise SpecError("method", f"method {method!r} cannot continue `{label}`: it is {kind}, so continue it with "
                                  f"method {' or '.join(repr(m) for m in methods)}")
    if adapter.get("modules_to_save"):
        raise SpecError("continue_from", f"continue_from `{label}` also trains whole modules (modules_to_save: "
                                         f"{', '.join(adapter['modules_to_save'])}), which the hub's recipe does not; "
                                         "train a fresh adapter instead")
    resolved = {f.name: getattr(hp, f.name) for f in fields(hp)}
    if method in VIRTUAL_TOKEN_METHODS:
        shaping = {"num_virtual_tokens": adapter.get("num_virtual_tokens")}
    else:
        shaping = {"target_modules": adapter.get("target_modules")}
        if method in LORA_METHODS:
            alpha = adapter.get("lora_alpha")
            shaping.update(r=adapter.get("r"), lora_alpha=_PEFT_DEFAULT_LORA_ALPHA if alpha is None else alpha)
    for name, recorded in shaping.items():
        if recorded is None:
            continue  # not recorded: the job's value stands, and the worker's weight check decides
        if name not in given:
            resolved[name] = recorded
            continue
        ours = hp.lora_alpha_resolved if name == "lora_alpha" else getattr(hp, name)
        same = _same_targets(ours, recorded) if name == "target_modules" else ours == recorded
        if not same:
            show = json.dumps(recorded)
            raise SpecError(f"hyperparameters.{name}",
                            f"hyperparameters.{name} is {json.dumps(ours)} but continue_from `{label}` has {name} {show}; "
                            f"a continued adapter keeps its {name}: leave it out (it takes {show}) or train a fresh adapter")
    return TrainHyperparameters(**resolved)


# --- merge ---------------------------------------------------------------------------------


@dataclass
class AdapterWeight:
    """One adapter of a merge and its weight."""

    ref: str
    weight: float = 1.0


_MERGE_KEYS = ["type", "adapters", "output", "combination", "density", "dtype", "aliases", "message"]


@dataclass
class MergeSpec:
    """Merge one or more adapters (weighted) into their shared base; push the model to ``output``."""

    adapters: list[AdapterWeight]
    output: str
    combination: str = "linear"
    density: float = 0.5
    dtype: str = "float32"
    aliases: list[str] = field(default_factory=list)
    message: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> MergeSpec:
        data, common = _job_fields(data, MERGE, _MERGE_KEYS)
        combination = data.get("combination", "linear")
        if combination not in COMBINATIONS:
            raise SpecError("combination", f"combination must be one of {', '.join(COMBINATIONS)}; got {combination!r}")
        density = _float("density", data.get("density", 0.5), low=0, low_open=True, high=1, rule="a number with 0 < x <= 1")
        if combination == "linear" and density != 0.5:
            raise SpecError("density", "density applies only to ties, dare_linear and dare_ties merges; remove it")
        dtype = data.get("dtype", "float32")
        if dtype not in DTYPES:
            raise SpecError("dtype", f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        return cls(
            adapters=_adapters(data.get("adapters")), combination=combination, density=density, dtype=dtype, **common,
        )

    def to_dict(self) -> dict:
        return {
            "type": "merge", "adapters": [{"ref": a.ref, "weight": a.weight} for a in self.adapters],
            "output": self.output, "combination": self.combination, "density": self.density, "dtype": self.dtype,
            "aliases": list(self.aliases), "message": self.message,
        }


def _adapters(value: Any) -> list[AdapterWeight]:
    if value is None:
        raise SpecError("adapters", "adapters is required: a list of {\"ref\": \"ns/name@rev\", \"weight\": 1.0}")
    if not isinstance(value, list) or not value:
        raise SpecError("adapters", "adapters must be a non-empty list of {\"ref\", \"weight\"} objects")
    out: list[AdapterWeight] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(value):
        where = f"adapters[{i}]"
        # shorthand: "acme/bot@3" means {"ref": "acme/bot@3", "weight": 1.0}
        item = _check_keys(where, {"ref": raw} if isinstance(raw, str) else raw, ["ref", "weight"])
        ref = _ref(f"{where}.ref", item.get("ref"), allow_revision=True)
        weight = item.get("weight", 1.0)
        if not _is_number(weight):
            raise SpecError(f"{where}.weight", f"{where}.weight must be a finite number, got {weight!r}")
        key = str(parse_ref(ref))
        if key in seen:
            raise SpecError(f"{where}.ref", f"{where}.ref {ref!r} is already adapters[{seen[key]}]; list each adapter once")
        seen[key] = i
        out.append(AdapterWeight(ref=ref, weight=float(weight)))
    return out


# --- eval ----------------------------------------------------------------------------------

_EVAL_KEYS = ["type", "adapter", "dataset", "dataset_file", "max_rows", "max_new_tokens", "max_seq_length",
              "batch_size"]
#: the most rows, generated tokens and tokens per row an eval job may ask for: it runs on a shared CPU queue
MAX_EVAL_ROWS = 100_000
MAX_EVAL_NEW_TOKENS = 1024
#: what an eval job may attach to a version: this many metrics, each a finite number under a short snake_case name
MAX_EVAL_METRICS = 64
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass
class EvalSpec:
    """Score adapter version ``adapter`` on ``dataset``; the metrics are attached to that version (no new version).

    Every format gets ``loss`` and ``perplexity`` (token-weighted, the training recipe's tokenisation and
    label masking); ``prompt``/``completion`` rows also ``exact_match`` and ``token_accuracy`` of greedy
    generations of at most ``max_new_tokens`` tokens. At most ``max_rows`` rows (the file's first) are scored.
    """

    adapter: str
    dataset: str
    dataset_file: str | None = None
    max_rows: int = 1000
    max_new_tokens: int = 64
    max_seq_length: int = 512
    batch_size: int = 8

    @classmethod
    def from_dict(cls, data: dict) -> EvalSpec:
        data = _check_keys("", data, _EVAL_KEYS)
        if data.get("type", EVAL) != EVAL:
            raise SpecError("type", f"type must be {EVAL!r} here, got {data.get('type')!r}")
        dataset_file = data.get("dataset_file")
        return cls(
            adapter=_ref("adapter", data.get("adapter"), allow_revision=True),
            dataset=_ref("dataset", data.get("dataset"), allow_revision=True),
            dataset_file=None if dataset_file is None else _dataset_file("dataset_file", dataset_file),
            max_rows=_int("max_rows", data.get("max_rows", 1000), minimum=1, maximum=MAX_EVAL_ROWS),
            max_new_tokens=_int("max_new_tokens", data.get("max_new_tokens", 64), minimum=1, maximum=MAX_EVAL_NEW_TOKENS),
            max_seq_length=_int("max_seq_length", data.get("max_seq_length", 512), minimum=8, maximum=1_048_576),
            batch_size=_int("batch_size", data.get("batch_size", 8), minimum=1, maximum=65_536),
        )

    def to_dict(self) -> dict:
        return {
            "type": EVAL, "adapter": self.adapter, "dataset": self.dataset, "dataset_file": self.dataset_file,
            "max_rows": self.max_rows, "max_new_tokens": self.max_new_tokens, "max_seq_length": self.max_seq_length,
            "batch_size": self.batch_size,
        }


def check_eval_metrics(value: Any) -> dict[str, float | int]:
    """The metrics an eval job completes with: at most MAX_EVAL_METRICS finite numbers under snake_case names."""
    if not isinstance(value, dict) or not value:
        raise SpecError("metrics", "metrics must be a non-empty JSON object of metric name to number")
    if len(value) > MAX_EVAL_METRICS:
        raise SpecError("metrics", f"metrics holds {len(value)} entries; at most {MAX_EVAL_METRICS}")
    for name, number in value.items():
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise SpecError("metrics", f"metrics: {name!r} is not a metric name (lower-case snake_case, "
                                       "at most 64 characters)")
        if not _is_number(number):
            raise SpecError(f"metrics.{name}", f"metrics.{name} must be a finite number, got {number!r}")
    return dict(value)


def spec_from_dict(data: dict) -> TrainSpec | MergeSpec | EvalSpec:
    """A :class:`TrainSpec`, :class:`MergeSpec` or :class:`EvalSpec`, chosen by ``data["type"]``."""
    if not isinstance(data, dict):
        raise SpecError("spec", f"the spec must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == TRAIN:
        return TrainSpec.from_dict(data)
    if kind == MERGE:
        return MergeSpec.from_dict(data)
    if kind == EVAL:
        return EvalSpec.from_dict(data)
    raise SpecError("type", f"type must be one of {', '.join(JOB_TYPES)}, got {kind!r}")


_SPEC_TYPES = {TrainSpec: TRAIN, MergeSpec: MERGE, EvalSpec: EVAL}


@dataclass
class JobRequest:
    """A job as submitted: the spec, the queue it runs on and how many attempts it may take."""

    spec: TrainSpec | MergeSpec | EvalSpec
    queue: str
    max_attempts: int = DEFAULT_ATTEMPTS

    @property
    def type(self) -> str:
        return _SPEC_TYPES[type(self.spec)]


def parse_job_request(body: Any) -> JobRequest:
    """A submitted job body: a train, merge or eval spec plus optional ``queue`` and ``max_attempts``."""
    if not isinstance(body, dict):
        raise SpecError("spec", f"the job must be a JSON object, got {type(body).__name__}")
    body = dict(body)
    queue, max_attempts = body.pop("queue", None), body.pop("max_attempts", DEFAULT_ATTEMPTS)
    spec = spec_from_dict(body)
    kind = _SPEC_TYPES[type(spec)]
    if queue is None:
        queue = DEFAULT_QUEUE[kind]
    if queue not in QUEUES:
        raise SpecError("queue", f"queue {queue!r} is unknown; use one of {', '.join(QUEUES)}")
    if not _is_int(max_attempts) or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise SpecError("max_attempts", f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, got {max_attempts!r}")
    return JobRequest(spec=spec, queue=queue, max_attempts=max_attempts)


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``key=value`` pairs (``--set r=8``); a value is JSON when it parses (``8``, ``["q_proj"]``), else a string."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("hyperparameters", f"--set {item!r}: write key=value")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out
