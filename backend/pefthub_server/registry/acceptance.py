"""Which files a version may hold: accepted types, pickle refused, safetensors headers, JSON, text, adapter configs.

The backend never imports torch and never loads tensors. Pickle-based weights are refused
by name (``*.bin``, ``*.pt``, ...) and by content (pickle or zip magic bytes under any
name); safetensors headers are read with the protocol's strict reader
(:mod:`pefthub.protocol.safetensors`). JSON and text files are checked in bounded time and
memory (:func:`read_document`): a size cap per kind before a byte is read, the configs the
hub keeps parsed, every other JSON file checked by a streaming parser, text checked to be UTF-8.
"""

from __future__ import annotations

import codecs
import collections
import io
import json
from collections.abc import Callable, Mapping
from typing import Any

import ijson.backends.yajl2_c as yajl
from ijson.common import JSONError

from pefthub.protocol.errors import HeaderError
from pefthub.protocol.limits import MAX_CONFIG_JSON_SIZE, MAX_JSON_SIZE, MAX_TEXT_SIZE
from pefthub.protocol.manifest import ADAPTER_CONFIG, MODEL_CONFIG, Entry
from pefthub.protocol.peft import ALL_LINEAR, PEFT_TYPES, PROMPT_LEARNING_TYPES, RANKED_TYPES, target_regex_problem
from pefthub.protocol.safetensors import looks_like_safetensors, read_header
from pefthub_server.core import parsers
from pefthub_server.core.errors import TooLarge, ValidationFailed, from_protocol

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
#: the JSON files the hub reads and keeps values from: an adapter's and a model's config (top level)
CONFIGS = frozenset({ADAPTER_CONFIG, MODEL_CONFIG})
_DECODE_CHUNK = 1024 * 1024

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
    """Bounds-check a safetensors header (the protocol's reader); return ``{tensor: {"dtype", "shape"}}``.

    A tensor name a database cannot store is refused too: a base's names become its fingerprint.
    """
    try:
        header = read_header(size, read_range, path=path)
    except HeaderError as exc:
        raise from_protocol(exc) from None
    for name in header.tensors:
        if char := parsers.unstorable_char(name):
            shown = name.encode("unicode_escape").decode()
            raise ValidationFailed(f"`{path}` is not a valid safetensors file: tensor `{_show(name)}` holds {char}, "
                                   "which a database cannot store; rename it", code="invalid_safetensors",
                                   detail={"path": path, "tensor": shown})
    return {name: {"dtype": t.dtype, "shape": list(t.shape)} for name, t in header.tensors.items()}


def parse_json(path: str, data: bytes) -> dict:
    """Parse a config the hub reads and keeps: a JSON object, checked by :func:`pefthub_server.core.parsers.loads`."""
    try:
        value = parsers.loads(data)
    except parsers.JSONProblem as exc:
        where = f"`{path}`: {exc.message}" if exc.field is not None else f"`{path}` is not valid JSON: {exc.message}"
        detail = {"path": path, **exc.detail, **({"field": exc.field} if exc.field is not None else {})}
        raise ValidationFailed(where, code="invalid_json", detail=detail) from None
    if not isinstance(value, dict):
        raise ValidationFailed(f"`{path}` is not valid JSON: it holds a JSON {type(value).__name__}, not an object",
                               code="invalid_json", detail={"path": path})
    return value


def _not_utf8_at(data: bytes) -> int | None:
    """The offset of the first byte of ``data`` that is not UTF-8, or None; decoded a chunk at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    offset = 0
    try:
        for offset in range(0, len(data), _DECODE_CHUNK):
            decoder.decode(view[offset:offset + _DECODE_CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return offset + exc.start
    return None


def check_json(path: str, data: bytes) -> None:
    """Check any JSON file without building its values: memory stays near the file's size, whatever it holds.

    The rules of :func:`parse_json` that matter for a file the hub only stores and serves
    (no byte-order mark, nesting, UTF-8, syntax, one value) are checked on the bytes and by
    yajl's streaming parser. Numbers keep their digits (``int(1e30)`` in tokenizer configs is valid).
    """

    def bad(message: str, **detail: Any) -> None:
        raise ValidationFailed(f"`{path}` is not valid JSON: {message}", code="invalid_json",
                               detail={"path": path, **detail})

    try:
        parsers.precheck(data)
    except parsers.JSONProblem as exc:
        bad(exc.message, **exc.detail)
    if (byte := _not_utf8_at(data)) is not None:
        bad(f"it is not UTF-8 (byte {byte})", byte=byte)
    try:
        collections.deque(yajl.basic_parse(io.BytesIO(data), use_float=False), maxlen=0)
    except JSONError as exc:
        bad(str(exc).split("\n")[0].rstrip("."))


def check_text(path: str, data: bytes) -> None:
    """Text is UTF-8 (a byte-order mark allowed)."""
    if (byte := _not_utf8_at(data)) is not None:
        raise ValidationFailed(f"`{path}` is not UTF-8 text: byte {byte} is not part of a UTF-8 character; save it "
                               "as UTF-8", code="invalid_text", detail={"path": path, "byte": byte})


def _cap(path: str, category: str) -> tuple[int, str]:
    if category == "json" and path in CONFIGS:
        return MAX_CONFIG_JSON_SIZE, f"for {' and '.join(sorted(CONFIGS))}, which the hub reads into memory"
    if category == "json":
        return MAX_JSON_SIZE, "for a JSON file"
    return MAX_TEXT_SIZE, "for a text file (keep data as *.jsonl)"


def read_document(path: str, category: str, size: int, read_range: Callable[[int, int], bytes]) -> dict | None:
    """Check a JSON or text file's content; the parsed object of a config the hub reads, else None.

    Each kind has a size cap, checked from the declared size before a byte is read (a 413
    naming the file and the limit): :data:`CONFIGS` are parsed (:func:`parse_json`), other
    JSON is checked without being built (:func:`check_json`), text must be UTF-8
    (:func:`check_text`). Safetensors, JSON Lines and tokenizer files are not read here.
    """
    if category not in ("json", "text"):
        return None
    limit, which = _cap(path, category)
    if size > limit:
        raise TooLarge(f"`{path}` is {size} bytes; the limit {which} is {limit} bytes ({limit // 1024**2} MiB).",
                       detail={"path": path, "size": size, "limit": limit})
    data = read_range(0, size)
    if category == "text":
        check_text(path, data)
        return None
    if path in CONFIGS:
        return parse_json(path, data)
    check_json(path, data)
    return None


def check_kind(path: str, category: str) -> str:
    """What a file's content is checked as: its category (:func:`check_file_type`), or `config` for the
    configs the hub reads and keeps (:data:`CONFIGS`)."""
    return "config" if category == "json" and path in CONFIGS else category


def check_blob(path: str, kind: str, size: int, read_range: Callable[[int, int], bytes]) -> Any:
    """Check one file's content as ``kind`` (:func:`check_kind`): no pickle or zip magic, then a safetensors
    header (its tensors returned), a config (its object returned), other JSON or text (None returned).

    What it returns depends on the blob's bytes alone (``path`` only names the file in errors), so
    :class:`BlobChecks` keeps it by the blob's sha256.
    """
    check_magic(path, read_range(0, min(size, 16)))
    if kind == "safetensors":
        return parse_safetensors_header(path, size, read_range)
    return read_document(path, "json" if kind == "config" else kind, size, read_range)


class BlobChecks:
    """What :func:`check_blob` found for each blob and kind, so each blob is read once as each kind, however
    many paths of a push (a manifest may name one 64 MiB blob 10,000 times) or later commits name it.

    ``known``: (sha256, kind) -> the JSON text earlier commits recorded; :attr:`fresh` holds what this
    push read, in the same form, for the commit to record.
    """

    def __init__(self, known: Mapping[tuple[str, str], str] | None = None) -> None:
        self._found: dict[tuple[str, str], str] = dict(known or {})
        self.fresh: dict[tuple[str, str], str] = {}

    def result(self, entry: Entry, kind: str, reader: Callable[[], Callable[[int, int], bytes]]) -> Any:
        """:func:`check_blob` for ``entry`` unless its blob was checked as ``kind`` before; a new object each time
        (a caller may change it). ``reader()`` makes the blob's range reader, only when it must be read."""
        key = (entry.sha256, kind)
        if (text := self._found.get(key)) is None:
            text = self._found[key] = self.fresh[key] = json.dumps(check_blob(entry.path, kind, entry.size, reader()))
        return json.loads(text)


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
    if isinstance(targets, str) and targets != ALL_LINEAR and (why := target_regex_problem(targets)):
        bad("target_modules", why)
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
