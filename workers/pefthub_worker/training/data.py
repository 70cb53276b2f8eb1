"""Training data: JSONL rows, checked in full before any model is loaded, then tokenised.

One format per file, chosen by the first row:

- ``{"text": ...}``: loss on every token;
- ``{"prompt": ..., "completion": ...}``: prompt and completion are tokenised apart and
  joined, so the labels are ``-100`` on exactly the prompt's tokens: loss on the completion
  (and the end-of-sequence token) only;
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the tokenizer's chat template
  when it has one, else as ``role: content`` lines; loss on the assistant turns only
  (their content and what the template closes them with). If a template does not render
  conversations prefix by prefix, the row falls back to loss on every token, and
  :class:`TokenStats` counts it.

Other keys in a row (``id``, ``meta``...) are ignored.

Micro-batches hold rows one per sequence (padded), or packed: whole rows first-fit-decreasing
into sequences of up to ``max_seq_length`` tokens, each row with its own positions and loss
mask (see :func:`collate`), so packed training matches unpacked training on the same rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
_NEEDS = "rows need `text`, or `prompt` and `completion`, or `messages`"
_DESCRIBE = {"text": "a `text` row", "prompt_completion": "a `prompt`/`completion` row", "messages": "a `messages` row"}


class DatasetError(ValueError):
    """The dataset cannot be trained on; ``message`` names the file and line."""

    code = "dataset_invalid"

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field

    def __str__(self) -> str:
        return self.message


@dataclass
class Row:
    line: int
    data: dict


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenStats:
    rows: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn from after truncation
    loss_on_all_tokens: int = 0  # chat rows whose template could not be split by turn
    chat_rendering: str = ""  # "template" | "role: content"
    notes: list[str] = field(default_factory=list)


# --- reading and checking -----------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[list[Row], str]:
    """Every row of ``path`` with its line number, and the file's format; raises :class:`DatasetError`."""
    path = Path(path)
    name = path.name
    rows: list[Row] = []
    fmt: str | None = None
    first_line = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read the dataset file ({exc.strerror})") from None
    with fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(f"{name} line {number}: not UTF-8 text", line=number) from None
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{name} line {number}: invalid JSON ({exc.msg} at column {exc.colno})",
                                   line=number) from None
            if not isinstance(data, dict):
                raise DatasetError(f"{name} line {number}: a row must be a JSON object, got {type(data).__name__}; "
                                   f"{_NEEDS}", line=number)
            row_fmt = _row_format(data, name, number)
            if fmt is None:
                fmt, first_line = row_fmt, number
            elif row_fmt != fmt:
                raise DatasetError(f"{name} line {number}: {_DESCRIBE[row_fmt]}, but line {first_line} is "
                                   f"{_DESCRIBE[fmt]}; use one format per file", line=number)
            rows.append(Row(number, data))
    if fmt is None:
        raise DatasetError(f"{name} is empty: no rows to train on ({_NEEDS})")
    return rows, fmt


def _row_format(data: dict, name: str, line: int) -> str:
    def fail(message: str, key: str | None) -> DatasetError:
        return DatasetError(f"{name} line {line}: {message}", line=line, field=key)

    has = {key for key in ("text", "prompt", "completion", "messages") if key in data}
    if has == {"text"}:
        _string(data, "text", fail)
        return "text"
    if has and has <= {"prompt", "completion"}:
        for key in ("prompt", "completion"):
            if key not in data:
                raise fail(f"missing `{key}` ({_NEEDS})", key)
        _string(data, "prompt", fail, allow_empty=True)
        _string(data, "completion", fail)
        return "prompt_completion"
    if has == {"messages"}:
        _messages(data["messages"], fail)
        return "messages"
    if not has:
        raise fail(f"missing `text` ({_NEEDS})", "text")
    raise fail(f"has {', '.join(f'`{k}`' for k in sorted(has))}: mixed formats in one row ({_NEEDS})", None)


def _string(data: dict, key: str, fail: Any, *, allow_empty: bool = False) -> None:
    value = data[key]
    if not isinstance(value, str):
        raise fail(f"`{key}` must be a string, got {type(value).__name__}", key)
    if not value and not allow_empty:
        raise fail(f"`{key}` is empty", key)


def _messages(messages: Any, fail: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise fail("`messages` must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise fail(f"`{where}` needs a string `role`", where)
        if not isinstance(message.get("content"), str):
            raise fail(f"`{where}.content` must be a string", f"{where}.content")
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("`messages` has no assistant turn to learn from", "messages")


# --- tokenising ---------------------------------------------------------------------------


def tokenize(rows: list[Row], fmt: str, tokenizer: Any, *, max_seq_length: int, name: str) -> tuple[list[Example], TokenStats]:
    """Token ids and labels for every row (truncated to ``max_seq_length``)."""
    stats = TokenStats(rows=len(rows))
    eos = tokenizer.eos_token_id
    examples: list[Example] = []
    for row in rows:
        try:
            if fmt == "text":
                ids = _with_eos(tokenizer(row.data["text"], add_special_tokens=True)["input_ids"], eos)
                labels = list(ids)
            elif fmt == "prompt_completion":
                prompt = tokenizer(row.data["prompt"], add_special_tokens=True)["input_ids"]
                completion = _with_eos(tokenizer(row.data["completion"], add_special_tokens=False)["input_ids"], eos)
                ids, labels = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
            else:
                ids, labels = _chat(row.data["messages"], tokenizer, stats)
        except DatasetError:
            raise
        except Exception as exc:  # a chat template that refuses the conversation, say
            raise DatasetError(f"{name} line {row.line}: cannot tokenise this row ({type(exc).__name__}: {exc})",
                               line=row.line) from None
        if len(ids) > max_seq_length:
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            stats.truncated += 1
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            stats.dropped += 1
            continue
        stats.tokens += len(ids)
        examples.append(Example(ids, labels))
    if not examples:
        raise DatasetError(f"{name}: no row has a token to learn from after truncation to max_seq_length="
                           f"{max_seq_length} (prompts too long?)")
    if stats.truncated:
        stats.notes.append(f"{stats.truncated} of {stats.rows} rows truncated to max_seq_length={max_seq_length}")
    if stats.dropped:
        stats.notes.append(f"{stats.dropped} rows skipped: nothing left to learn from after truncation")
    if stats.loss_on_all_tokens:
        stats.notes.append(f"{stats.loss_on_all_tokens} chat rows train on every token: the chat template does not "
                           "render turn by turn")
    return examples, stats


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _chat(messages: list[dict], tokenizer: Any, stats: TokenStats) -> tuple[list[int], list[int]]:
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    template = getattr(tokenizer, "chat_template", None)
    if template:
        stats.chat_rendering = "template"
        text, spans = _render_with_template(messages, tokenizer)
        add_special, eos = False, None  # the template writes its own special tokens
    else:
        stats.chat_rendering = "role: content"
        text, spans = _render_plain(messages)
        add_special, eos = True, tokenizer.eos_token_id
    try:
        encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # a slow tokenizer: no character offsets
        encoded, offsets, spans = tokenizer(text, add_special_tokens=add_special), None, None
    ids = list(encoded["input_ids"])
    if spans is None or offsets is None:
        stats.loss_on_all_tokens += 1
        labels = list(ids)
    else:
        labels = [tok if end > start and any(start < s_end and end > s_start for s_start, s_end in spans) else IGNORE_INDEX
                  for tok, (start, end) in zip(ids, offsets)]
    if eos is not None:
        ends_with_assistant = messages[-1]["role"] == "assistant"
        ids.append(eos)
        labels.append(eos if ends_with_assistant or spans is None else IGNORE_INDEX)
    return ids, labels


def _render_plain(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    text, spans = "", []
    for message in messages:
        head = f"{message['role']}:"
        body = f" {message['content']}\n"  # the space too: BPE tokenizers glue it to the first word
        if message["role"] == "assistant":
            spans.append((len(text) + len(head), len(text) + len(head) + len(body)))
        text += head + body
    return text, spans


def _render_with_template(messages: list[dict], tokenizer: Any) -> tuple[str, list[tuple[int, int]] | None]:
    """The rendered conversation and each assistant turn's character span (None if not prefix-stable)."""
    def render(part: list[dict], generation_prompt: bool = False) -> str:
        if not part:
            return ""
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(messages)
    spans: list[tuple[int, int]] = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, upto = render(messages[:k], generation_prompt=True), render(messages[: k + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            return full, None
        spans.append((len(before), len(upto)))
    return full, spans


# --- splitting and batching ---------------------------------------------------------------


def split(examples: list[Example], eval_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded random hold-out of ``eval_split`` of the rows (at least one; never all)."""
    if eval_split <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * eval_split)))
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the indices of ``lengths`` grouped into bins of at most ``capacity`` tokens.

    Longest first, each into the first bin with room; a tree of the bins' free space finds that
    bin in O(log n), so a large dataset packs in well under a second. Rows of equal length are
    taken in their order in ``lengths``: a reshuffle changes which rows share a bin, never how
    many bins there are (that depends on the lengths alone), so steps per epoch are fixed.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"a row is longer than the packing capacity of {capacity} tokens")
    size = 1
    while size < len(lengths):
        size *= 2
    free = [capacity] * (2 * size)  # free[node] = the most room in any bin below node; leaf size + b is bin b
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        node = 1
        while node < size:  # the leftmost bin with room; bins not yet opened (all room) lie right of the open ones
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        if node - size == len(bins):
            bins.append([])
        bins[node - size].append(i)
        free[node] -= lengths[i]
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return bins


def micro_batches(examples: list[Example], batch_size: int, seed: int, *,
                  pack_length: int | None = None) -> Iterator[tuple[int, list[list[Example]]]]:
    """Endless (epoch, micro-batch) pairs, reshuffled each epoch with a seeded generator.

    A micro-batch is a list of ``batch_size`` sequences (the last of an epoch may hold fewer),
    each a list of rows: one row per sequence, or with ``pack_length`` the rows packed by
    :func:`pack` into sequences of at most that many tokens (a row is never split), the
    sequences then shuffled by the same generator. Either way an epoch is one pass over the
    rows, and the stream is a function of (examples, batch_size, seed, pack_length) alone, so
    a resumed run rebuilds it and skips what was consumed.
    """
    rng = random.Random(seed)
    epoch = 0
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        if pack_length is None:
            sequences = [[i] for i in order]
        else:
            sequences = [[order[j] for j in b] for b in pack([len(examples[i].input_ids) for i in order], pack_length)]
            rng.shuffle(sequences)  # packing puts the longest rows first: mix them over the epoch
        for start in range(0, len(sequences), batch_size):
            yield epoch, [[examples[i] for i in seq] for seq in sequences[start:start + batch_size]]
        epoch += 1


def batches_per_epoch(examples: list[Example], batch_size: int, *, pack_length: int | None = None) -> int:
    """How many micro-batches :func:`micro_batches` yields per epoch."""
    n = len(examples) if pack_length is None else len(pack([len(e.input_ids) for e in examples], pack_length))
    return -(-n // batch_size)


def collate(sequences: list[list[Example]], pad_id: int, *, packed: bool = False) -> dict[str, Any]:
    """Right-padded tensors for a micro-batch of sequences.

    Unpacked (one row per sequence): input_ids, attention_mask, labels (-100 on padding).

    Packed: input_ids, labels and position_ids, no attention_mask. Positions restart at 0 on
    every row, so each row is embedded exactly as if alone, and the first label of every row
    is -100, so no token is predicted from the row before it. Given position_ids and no
    attention_mask, transformers (``masking_utils.find_packed_sequence_indices``, for
    eager and sdpa attention alike) reads a new row wherever the position does not go up by
    one and builds a block-diagonal causal mask: no row sees another. Padding after the last
    row is a segment of its own (positions from 0, labels -100) that no row attends to.
    Flash-attention takes the same position_ids as varlen boundaries (one sequence per
    micro-batch: see the recipe).
    """
    import torch

    if not packed and any(len(seq) != 1 for seq in sequences):
        raise ValueError("unpacked micro-batches hold one row per sequence")
    width = max(sum(len(e.input_ids) for e in seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    if not packed:
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (e,) in enumerate(sequences):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    positions = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        at = 0
        for e in seq:
            n = len(e.input_ids)
            ids[i, at:at + n] = torch.tensor(e.input_ids)
            labels[i, at + 1:at + n] = torch.tensor(e.labels[1:])
            positions[i, at:at + n] = torch.arange(n)
            at += n
        positions[i, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
