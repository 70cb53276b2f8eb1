"""Checks on pushed files: paths, file types, pickle refusal, safetensors headers,
adapter configs, and the base-model fingerprint adapters are checked against.

Standard library only: the backend never imports torch and never loads tensors. A
safetensors file is an 8-byte little-endian header length, a JSON header and the
data; the header is read through ``read_range`` (two calls at most, so an S3-backed
blob costs two range GETs) and bounds-checked as strictly as the safetensors library.

Module-name matching (adapter keys and ``target_modules`` against a fingerprint): an
exact name wins; otherwise the one base module whose dotted name ends with the
adapter's (the base carries an extra leading ``model.``/``transformer.``) or whose
name the adapter's ends with (the base lacks it). No match, or several, is
``unknown_module``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from pefthub_server.core.errors import ValidationFailed

MAX_PATH_LENGTH = 512
MAX_HEADER_SIZE = 100 * 1024 * 1024

_SAFE_ADVICE = (
    "PEFT Hub only accepts safetensors. Re-save it with "
    "`model.save_pretrained(dir, safe_serialization=True)` or "
    "`safetensors.torch.save_file(state_dict, 'model.safetensors')`"
)
_PICKLE_KINDS = {
    ".bin": "a pickle-based PyTorch file", ".pt": "a pickle-based PyTorch file",
    ".pth": "a pickle-based PyTorch file", ".ckpt": "a pickle-based PyTorch checkpoint",
    ".pkl": "a pickle file", ".pickle": "a pickle file", ".dill": "a pickle (dill) file",
    ".joblib": "a pickle-based joblib file",
}
_TOKENIZER_NAMES = frozenset({"tokenizer.model", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model"})
_TEXT_NAMES = frozenset({"readme", "license", ".gitattributes"})
_CATEGORIES = {".safetensors": "safetensors", ".json": "json", ".jsonl": "jsonl",
               ".txt": "text", ".md": "text", ".tiktoken": "tokenizer"}
ACCEPTED_FILES = ("*.safetensors, *.json, *.jsonl, *.txt, *.md, README, LICENSE, .gitattributes and tokenizer "
                  "files (tokenizer.model, *.tiktoken, vocab.txt, merges.txt, spiece.model, sentencepiece.bpe.model)")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

# Bits per element, as the safetensors library defines its dtypes.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}

PEFT_TYPES = frozenset({
    "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA", "ADALORA", "ADAMSS", "BOFT",
    "ADAPTION_PROMPT", "IA3", "BEFT", "LILY", "LOHA", "LOKR", "OFT", "POLY", "LN_TUNING", "VERA", "FROD", "PVERA",
    "FOURIERFT", "GLORA", "XLORA", "HRA", "VBLORA", "UNILORA", "CPT", "MISS", "RANDLORA", "ROAD",
    "TRAINABLE_TOKENS", "HIRA", "SHIRA", "C3A", "WAVEFT", "OSF", "DELORA", "GRALORA", "CARTRIDGE", "TINYLORA",
    "PSOFT", "PEANUT", "SHADOW", "SUPERTUNING", "DEFT",
})  # peft 0.21's PeftType
_RANKED_TYPES = frozenset({"LORA", "ADALORA", "LOHA", "LOKR", "VERA", "RANDLORA"})
_PROMPT_TYPES = frozenset({"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING"})

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


def _show(value: str, limit: int = 160) -> str:
    text = repr(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- paths and types

def check_path(path: str) -> str:
    """Return ``path`` unchanged if it is a safe relative ``/``-separated path."""

    def refuse(rule: str) -> None:
        raise ValidationFailed(
            f"path `{_show(str(path))}` is not allowed: {rule}; use a relative path with '/' between folders",
            code="invalid_path", detail={"path": str(path)[:MAX_PATH_LENGTH], "rule": rule})

    if not isinstance(path, str) or not path:
        refuse("it is empty")
    if len(path) > MAX_PATH_LENGTH:
        refuse(f"it is {len(path)} characters long, over the limit of {MAX_PATH_LENGTH}")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        refuse("it contains a NUL or control character")
    if "\\" in path:
        refuse("it contains a backslash")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        refuse("it is absolute")
    for part in path.split("/"):
        if not part:
            refuse("it has an empty component ('//' or a trailing '/')")
        if part in (".", ".."):
            refuse(f"it has a '{part}' component")
        if part.casefold() == ".git":
            refuse("it has a `.git` component")
    return path


def check_file_type(path: str) -> str:
    """Category of an accepted file: safetensors, json, jsonl, text or tokenizer."""
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    ext = lower[lower.rfind("."):] if "." in lower else ""
    if lower in _TOKENIZER_NAMES:
        return "tokenizer"
    if lower in _TEXT_NAMES:
        return "text"
    if ext in _PICKLE_KINDS:
        raise ValidationFailed(
            f"`{path}` is {_PICKLE_KINDS[ext]}, which can run arbitrary code when loaded; {_SAFE_ADVICE}",
            code="pickle_refused", detail={"path": path})
    if ext in _CATEGORIES:
        return _CATEGORIES[ext]
    raise ValidationFailed(f"`{path}` is not an accepted file type; PEFT Hub accepts {ACCEPTED_FILES}",
                           code="file_type_refused", detail={"path": path})


def _looks_like_safetensors(head: bytes) -> bool:
    # A safetensors header length can start with 0x80 0x02 (640 bytes), so look further.
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= MAX_HEADER_SIZE


def check_magic(path: str, head: bytes) -> None:
    """Refuse pickle or zip (``torch.save``) content, whatever the file is called."""
    if _looks_like_safetensors(head):
        return
    if head[:4] in _ZIP_MAGICS:
        kind = "a zip archive (the format of `torch.save`, which holds pickle data)"
    elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        kind = f"pickle data (protocol {head[1]})"
    else:
        return
    raise ValidationFailed(
        f"`{path}` contains {kind} whatever its name says; pickle can run arbitrary code when loaded. {_SAFE_ADVICE}",
        code="pickle_refused", detail={"path": path})


# ---------------------------------------------------------------- safetensors and JSON

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in header")
    return result


def parse_safetensors_header(path: str, size: int, read_range: Callable[[int, int], bytes]) -> dict[str, dict]:
    """Bounds-check a safetensors header; return ``{tensor: {"dtype", "shape"}}``."""

    def bad(message: str, tensor: str | None = None) -> None:
        where = f" tensor `{_show(tensor)}`" if tensor is not None else ""
        raise ValidationFailed(f"`{path}` is not a valid safetensors file:{where} {message}",
                               code="invalid_safetensors", detail={"path": path, "tensor": tensor})

    if size < 8:
        bad(f"it is {size} bytes long, too short for the 8-byte header length")
    prefix = read_range(0, 8)
    if len(prefix) != 8:
        bad("the 8-byte header length could not be read")
    n = int.from_bytes(prefix, "little")
    if not 2 <= n <= MAX_HEADER_SIZE:
        bad(f"header length {n} is outside 2..{MAX_HEADER_SIZE}")
    if 8 + n > size:
        bad(f"header length {n} runs past the end of the {size}-byte file")
    raw = read_range(8, n)
    if len(raw) != n:
        bad(f"only {len(raw)} of the {n} header bytes could be read")
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("it does not start with '{'")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        bad(f"the header is not a UTF-8 JSON object ({_show(str(exc), 200)})")
    data_size = size - 8 - n
    tensors: dict[str, dict] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                bad("`__metadata__` must map strings to strings")
            continue
        if not isinstance(entry, dict):
            bad("its entry is not an object", name)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
            bad(f"has unknown dtype {_show(repr(dtype), 40)}; known: {', '.join(_DTYPE_BITS)}", name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            bad(f"has shape {_show(repr(shape), 80)}, not a list of non-negative integers", name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            bad(f"has data_offsets {_show(repr(offsets), 80)}, not [begin, end] integers", name)
        begin, end = offsets
        if not 0 <= begin <= end:
            bad(f"has data_offsets {offsets}; need 0 <= begin <= end", name)
        if end > data_size:
            bad(f"has data_offsets {offsets} past the end of the {data_size}-byte data section", name)
        bits = math.prod(shape) * _DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            bad(f"is {dtype} × {shape} = {bits / 8:g} bytes but data_offsets {offsets} span {end - begin}", name)
        spans.append((begin, end, name))
        tensors[name] = {"dtype": dtype, "shape": list(shape)}
    position = 0
    for begin, end, name in sorted(spans):
        if begin < position:
            bad(f"starts at byte {begin}, overlapping the tensor before it (which ends at {position})", name)
        if begin > position:
            bad(f"starts at byte {begin} but the tensor before it ends at {position}: a hole in the data", name)
        position = end
    if position != data_size:
        bad(f"tensors cover {position} bytes but the data section holds {data_size}")
    return tensors


def parse_json(path: str, data: bytes) -> dict:
    """Parse a JSON object (UTF-8, no NaN/Infinity, which databases' JSON refuses)."""

    def bad(message: str, **detail: Any) -> None:
        raise ValidationFailed(f"`{path}` is not valid JSON: {message}", code="invalid_json",
                               detail={"path": path, **detail})

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed in JSON")

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad(f"it is not UTF-8 (byte {exc.start})", byte=exc.start)
    try:
        value = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        bad(f"{exc.msg} at line {exc.lineno}, column {exc.colno}", line=exc.lineno, column=exc.colno)
    except (ValueError, RecursionError) as exc:
        bad(str(exc) or "nested too deeply")
    if not isinstance(value, dict):
        bad(f"it holds a JSON {type(value).__name__}, not an object")
    return value


def parse_adapter_config(data: bytes) -> dict:
    """Validate peft's ``adapter_config.json``; return the fields the hub records."""
    cfg = parse_json("adapter_config.json", data)

    def bad(field: str, message: str) -> None:
        raise ValidationFailed(f"adapter_config.json: `{field}` {message}", code="invalid_adapter_config",
                               detail={"field": field, "value": cfg.get(field)})

    def typed(field: str, check: Callable[[Any], bool], what: str) -> Any:
        value = cfg.get(field)
        if value is not None and not check(value):
            bad(field, f"must be {what}, not {_show(json.dumps(value), 80)}")
        return value

    peft_type = cfg.get("peft_type")
    if not isinstance(peft_type, str):
        bad("peft_type", "is missing or not a string (e.g. \"LORA\")")
    peft_type = peft_type.upper()
    if peft_type not in PEFT_TYPES:
        bad("peft_type", f"is {peft_type!r}; known types: {', '.join(sorted(PEFT_TYPES))}")

    def is_int(v: Any) -> bool:
        return type(v) is int

    r = typed("r", is_int, "an integer")
    if peft_type in _RANKED_TYPES and (r is None or r <= 0):
        bad("r", f"must be a positive integer for {peft_type}")
    lora_alpha = typed("lora_alpha", lambda v: type(v) in (int, float), "a number")
    nvt = typed("num_virtual_tokens", is_int, "an integer")
    if peft_type in _PROMPT_TYPES and (nvt is None or nvt <= 0):
        bad("num_virtual_tokens", f"must be a positive integer for {peft_type}")
    targets = typed("target_modules", lambda v: isinstance(v, str) or (
        isinstance(v, list) and all(isinstance(x, str) and x for x in v)), "a list of module names or a regex")
    if isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as exc:
            bad("target_modules", f"is not a valid regular expression ({exc})")
    return {
        "peft_type": peft_type,
        "task_type": typed("task_type", lambda v: isinstance(v, str), "a string"),
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": targets,
        "use_dora": bool(typed("use_dora", lambda v: isinstance(v, bool), "true or false")),
        "modules_to_save": typed("modules_to_save", lambda v: isinstance(v, list)
                                 and all(isinstance(x, str) for x in v), "a list of module names"),
        "num_virtual_tokens": nvt,
        "base_model_name_or_path": typed("base_model_name_or_path", lambda v: isinstance(v, str), "a string"),
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


def _target_matches(entry: str, names: list[str]) -> bool:
    # peft: a module is targeted when its name is the entry or ends with "." + entry.
    return any(n == entry or n.endswith("." + entry) or entry.endswith("." + n) for n in names)


def check_adapter_against_base(adapter: dict, tensors: dict[str, dict], fingerprint: dict, *, base_label: str) -> None:
    """Every targeted module must exist in the base and every adapter tensor fit it.

    A fingerprint without ``modules`` (none was computed for the base) checks nothing.
    """
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

    targets = adapter.get("target_modules")
    if isinstance(targets, list):
        for entry in targets:
            if not _target_matches(entry, names):
                unknown(f"targets `{entry}`", entry)
    elif isinstance(targets, str) and targets != "all-linear":
        suffixes = (".".join(n.split(".")[i:]) for n in names for i in range(n.count(".") + 1))
        if not any(re.fullmatch(targets, s) for s in suffixes):
            unknown(f"targets `{targets}` (a regex)", targets, why="has no module it matches")

    if adapter.get("peft_type") in _PROMPT_TYPES:
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
