"""Does an adapter fit its base? The base model's fingerprint, and every adapter checked against it.

A model version's fingerprint (computed from its ``config.json`` and safetensors
headers) records its architecture and every linear module's
``[in_features, out_features]``. An adapter version is checked against its base's:
every targeted module must exist (peft's matching rules,
:func:`pefthub.protocol.peft.unmatched_target`) and every adapter tensor must fit.

Adapter tensor keys are matched to base modules by name: an exact name wins; otherwise
the one base module whose dotted name ends with the adapter's (the base carries an
extra leading ``model.``/``transformer.``) or whose name the adapter's ends with (the
base lacks it). No match, or several, is ``unknown_module``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import regex

from pefthub.protocol.peft import ALL_LINEAR, PROMPT_LEARNING_TYPES, target_regex_problem, unmatched_target
from pefthub_server.core.errors import ValidationFailed

#: CPU seconds a ``target_modules`` regex may take to match one base's module names; usual
#: patterns take microseconds per name
REGEX_SECONDS = 0.1

# transformers models whose c_attn/c_proj/c_fc are Conv1D, weight stored [in, out].
_CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "decision_transformer", "imagegpt", "clvp", "clvp_decoder"})
_CONV1D_NAMES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})
_EMBEDDING_NAMES = frozenset({"wte", "wpe", "shared", "relative_attention_bias"})
_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in", "shared")

# Adapter key suffix (as peft saves it, adapter name removed) -> (role, pair).
# Roles: A = [r, in]; B = [out, r]; out = [out]; ia3 = [out, 1] | [1, in]; full = the
# base weight itself; any = module must exist, shape unchecked (LoKr factors, ranks).
_MARKERS = {
    ".lora_A.weight": ("A", "lora"), ".lora_B.weight": ("B", "lora"), ".lora_B.bias": ("out", ""),
    ".lora_A": ("A", "lora"), ".lora_B": ("B", "lora"), ".lora_E": ("any", ""),
    ".lora_embedding_A": ("A", "lora"), ".lora_embedding_B": ("B", "lora"),
    ".lora_magnitude_vector.weight": ("out", ""), ".lora_magnitude_vector": ("out", ""),
    ".ia3_l": ("ia3", ""), ".hada_w1_a": ("B", "w1"), ".hada_w1_b": ("A", "w1"),
    ".hada_w2_a": ("B", "w2"), ".hada_w2_b": ("A", "w2"), ".vera_lambda_b": ("out", ""),
    ".vera_lambda_d": ("any", ""), ".lokr_w1": ("any", ""), ".lokr_w1_a": ("any", ""),
    ".lokr_w1_b": ("any", ""), ".lokr_w2": ("any", ""), ".lokr_w2_a": ("any", ""), ".lokr_w2_b": ("any", ""),
    ".base_layer.weight": ("full", ""),
}


# ---------------------------------------------------------------- fingerprint

def _config_value(config: dict, *keys: str, kind: type = int) -> Any:
    """The first of ``keys`` holding a ``kind``, in the config or (VLMs) its text_config."""
    for scope in (config, config.get("text_config")):
        for key in keys:
            if isinstance(scope, dict) and type(scope.get(key)) is kind:
                return scope[key]
    return None


def compute_fingerprint(config: dict, tensors: dict[str, dict]) -> dict:
    """A base model's architecture and every linear module's ``[in_features, out_features]``."""
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    modules: dict[str, list[int]] = {}
    embeddings: dict[str, list[int]] = {}
    for name, info in tensors.items():
        shape = info.get("shape") or []
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        last = module.rsplit(".", 1)[-1]
        if last in _EMBEDDING_NAMES or ("embed" in last and last != "embed_out"):
            embeddings[module] = list(shape)
        elif model_type in _CONV1D_MODEL_TYPES and last in _CONV1D_NAMES:
            modules[module] = list(shape)
        else:
            modules[module] = [shape[1], shape[0]]
    tied = _config_value(config, "tie_word_embeddings", kind=bool)
    if tied is None:  # absent: transformers 4 defaulted to tied
        tied = "lm_head" not in modules
    if tied and "lm_head" not in modules:
        vocab = _config_value(config, "vocab_size")
        inputs = [s for m, s in embeddings.items() if m.rsplit(".", 1)[-1] in _INPUT_EMBEDDINGS]
        table = next((s for s in inputs if vocab is None or s[0] == vocab), None)
        if table is not None:
            modules["lm_head"] = [table[1], table[0]]
    return {
        "model_type": model_type,
        "architectures": architectures,
        "hidden_size": _config_value(config, "hidden_size", "n_embd", "d_model"),
        "num_layers": _config_value(config, "num_hidden_layers", "num_layers", "n_layer"),
        "tie_word_embeddings": tied,
        "modules": modules,
        "embeddings": embeddings,
    }


# ---------------------------------------------------------------- adapter vs base

def _natural(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _resolve(name: str, known: dict[str, list[int]]) -> list[str]:
    if name in known:
        return [name]
    return [k for k in known if k.endswith("." + name) or name.endswith("." + k)]


def _bounded_fullmatch() -> Callable[[str, str], object]:
    """peft's ``re.fullmatch``, stopped after :data:`REGEX_SECONDS` of CPU over all the calls of one check.

    The ``regex`` module takes a timeout (it counts the process's CPU time, and raises
    ``TimeoutError``) and, with ``concurrent``, lets other threads run while it matches.
    """
    deadline = time.thread_time() + REGEX_SECONDS

    def fullmatch(pattern: str, name: str) -> object:
        left = deadline - time.thread_time()
        if left <= 0:
            raise TimeoutError(pattern)
        return regex.fullmatch(pattern, name, timeout=left, concurrent=True)

    return fullmatch


def check_adapter_against_base(adapter: dict, tensors: dict[str, dict], fingerprint: dict, *, base_label: str) -> None:
    """Every targeted module must exist in the base and every adapter tensor fit it.

    A ``target_modules`` regex is refused when it is too long or takes more than
    :data:`REGEX_SECONDS` to match. A fingerprint without ``modules`` (none was computed for
    the base) checks nothing more.
    """
    targets = adapter.get("target_modules")
    if isinstance(targets, str) and targets != ALL_LINEAR and (why := target_regex_problem(targets)):
        raise ValidationFailed(f"`target_modules` {why}", code="invalid_adapter_config",
                               detail={"target_modules": targets[:200], "base": base_label})
    if "modules" not in fingerprint:
        return
    linear: dict[str, list[int]] = fingerprint["modules"] or {}
    embeddings: dict[str, list[int]] = fingerprint.get("embeddings") or {}
    known = {**embeddings, **linear}
    names = sorted(known, key=_natural)
    short = ", ".join(sorted({m.rsplit(".", 1)[-1] for m in linear}))

    def unknown(what: str, module: str, tensor: str | None = None, why: str = "has no such module") -> None:
        raise ValidationFailed(f"adapter {what} but base `{base_label}` {why}; its linear modules are {short}",
                               code="unknown_module", detail={"module": module, "tensor": tensor, "base": base_label})

    def mismatch(tensor: str, got: list[int], expected: str, message: str, module: str | None = None) -> None:
        raise ValidationFailed(message, code="shape_mismatch", detail={
            "tensor": tensor, "module": module, "got": got, "expected": expected, "base": base_label})

    try:
        missing = unmatched_target(targets, names, fullmatch=_bounded_fullmatch())
    except TimeoutError:
        raise ValidationFailed(
            f"`target_modules` regex took longer than {REGEX_SECONDS} CPU seconds to match the {len(names)} module names of base "
            f"`{base_label}`: nested repeats such as `(.*)*` backtrack exponentially. List the module names "
            "(`[\"q_proj\", \"v_proj\"]`) or use a simple regex such as `.*\\.(q_proj|v_proj)`.",
            code="invalid_adapter_config", detail={"target_modules": targets, "base": base_label}) from None
    if missing is not None and isinstance(targets, str):
        unknown(f"targets `{targets}` (a regex)", targets, why="has no module it matches")
    if missing is not None:
        unknown(f"targets `{missing}`", missing)

    if adapter.get("peft_type") in PROMPT_LEARNING_TYPES:
        _check_prompt(adapter, tensors, fingerprint, base_label, mismatch)
        return

    per_module: dict[str, dict[str, tuple[str, str, list[int]]]] = {}
    for key, info in tensors.items():
        name = key.removeprefix("base_model.model.")
        marker = next((m for m in _MARKERS if name.endswith(m)), None)
        if marker is None:  # modules_to_save copies are checked when the base has the module
            if name.endswith(".weight") and len(hits := _resolve(name[: -len(".weight")], known)) == 1:
                per_module.setdefault(hits[0], {})[key] = ("full", "", info["shape"])
            continue
        module = name[: -len(marker)]
        hits = _resolve(module, known)
        if len(hits) > 1:
            unknown(f"tensor `{key}` is for module `{module}`", module, key,
                    why=f"has several modules it could mean ({', '.join(hits[:4])})")
        if not hits:
            unknown(f"tensor `{key}` is for module `{module}`", module, key)
        role, pair = _MARKERS[marker]
        per_module.setdefault(hits[0], {})[key] = (role, pair + ("emb" if "embedding" in marker else ""), info["shape"])

    for module in sorted(per_module, key=_natural):
        entries = per_module[module]
        raw = known[module]
        is_embedding = module not in linear
        # An Embedding [num, dim] maps num -> dim; a 2-D weight filed as an embedding that
        # carries lora_A/lora_B rather than lora_embedding_A/B is a Linear stored [out, in].
        if is_embedding and any(p.endswith("emb") for _, p, _ in entries.values()):
            in_, out = raw
        else:
            in_, out = (raw[1], raw[0]) if is_embedding else raw
        ranks: dict[str, tuple[str, int]] = {}
        for key, (role, pair, shape) in sorted(entries.items()):
            expected = {"A": f"[r, {in_}]", "B": f"[{out}, r]", "out": f"[{out}]",
                        "ia3": f"[{out}, 1] or [1, {in_}]", "full": str(raw if is_embedding else [out, in_])}.get(role)
            fits = {"A": len(shape) == 2 and shape[1] == in_, "B": len(shape) == 2 and shape[0] == out,
                    "out": shape == [out], "ia3": shape in ([out, 1], [1, in_]),
                    "full": shape in (raw, [out, in_], [in_, out])}.get(role, True)
            if not fits:
                mismatch(key, shape, expected or "", f"`{key}` has shape {shape} but base `{base_label}` module "
                         f"`{module}` has in_features {in_} and out_features {out}, so it should be {expected}", module)
            if role in ("A", "B"):
                rank = shape[0] if role == "A" else shape[1]
                first_key, first_rank = ranks.setdefault(pair, (key, rank))
                if first_rank != rank:
                    mismatch(key, shape, f"rank {first_rank}", f"`{key}` has shape {shape}, rank {rank}, but "
                             f"`{first_key}` has rank {first_rank}; a module's A and B must share one rank", module)


def _check_prompt(adapter: dict, tensors: dict[str, dict], fingerprint: dict, base_label: str,
                  mismatch: Callable[..., None]) -> None:
    info = tensors.get("prompt_embeddings")
    if info is None:
        return
    shape, nvt = info["shape"], adapter.get("num_virtual_tokens")
    hidden, layers = fingerprint.get("hidden_size"), fingerprint.get("num_layers")
    if len(shape) != 2 or (nvt and shape[0] % nvt):
        mismatch("prompt_embeddings", shape, f"[k × {nvt}, dim]", f"`prompt_embeddings` has shape {shape} but "
                 f"adapter_config.json says num_virtual_tokens {nvt}; it should be [k × {nvt}, dim]")
    if adapter.get("peft_type") == "PREFIX_TUNING":
        # peft: num_layers × 2 (key, value) × token_dim, where token_dim is head_dim × kv heads.
        if layers and shape[1] % (2 * layers):
            mismatch("prompt_embeddings", shape, f"[{shape[0]}, 2 × {layers} × token_dim]",
                     f"`prompt_embeddings` has shape {shape} but base `{base_label}` has {layers} layers, so its "
                     f"last dimension should be a multiple of 2 × {layers}")
    elif hidden and shape[1] != hidden:
        mismatch("prompt_embeddings", shape, f"[{shape[0]}, {hidden}]", f"`prompt_embeddings` has shape {shape} "
                 f"but base `{base_label}` has hidden size {hidden}, so it should be [{shape[0]}, {hidden}]")
