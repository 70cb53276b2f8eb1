"""Which files a version may hold: accepted types, pickle refused, safetensors headers, JSON, adapter configs.

Standard library only: the backend never imports torch and never loads tensors.
Pickle-based weights are refused by name (``*.bin``, ``*.pt``, ...) and by content
(pickle or zip magic bytes under any name); safetensors headers are read with the
protocol's strict reader (:mod:`pefthub.protocol.safetensors`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pefthub.protocol.errors import HeaderError
from pefthub.protocol.peft import PEFT_TYPES, PROMPT_LEARNING_TYPES, RANKED_TYPES
from pefthub.protocol.safetensors import looks_like_safetensors, read_header
from pefthub_server.core.errors import ValidationFailed, from_protocol

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

def _show(value: str, limit: int = 160) -> str:
    text = repr(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"



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



def check_magic(path: str, head: bytes) -> None:
    """Refuse pickle or zip (``torch.save``) content, whatever the file is called."""
    if looks_like_safetensors(head):
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



def parse_safetensors_header(path: str, size: int, read_range: Callable[[int, int], bytes]) -> dict[str, dict]:
    """Bounds-check a safetensors header (the protocol's reader); return ``{tensor: {"dtype", "shape"}}``."""
    try:
        header = read_header(size, read_range, path=path)
    except HeaderError as exc:
        raise from_protocol(exc) from None
    return {name: {"dtype": t.dtype, "shape": list(t.shape)} for name, t in header.tensors.items()}


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
    return adapter_fields(parse_json("adapter_config.json", data))


def adapter_fields(cfg: dict) -> dict:
    """The fields the hub records from a parsed adapter config, each checked; the config is not changed."""

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
    if peft_type in RANKED_TYPES and (r is None or r <= 0):
        bad("r", f"must be a positive integer for {peft_type}")
    lora_alpha = typed("lora_alpha", lambda v: type(v) in (int, float), "a number")
    nvt = typed("num_virtual_tokens", is_int, "an integer")
    if peft_type in PROMPT_LEARNING_TYPES and (nvt is None or nvt <= 0):
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
