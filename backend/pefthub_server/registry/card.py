"""The card (README.md) every version shows in the Hugging Face view: a model card, or a dataset card.

A README.md the user pushed is kept: the hub merges its own front matter keys into the
user's YAML front matter (``library_name``, ``base_model``, ``base_model_relation``: the
hub's verified values; ``tags``: the union, the user's first, their ``base_model:`` tags
giving way to the hub's when it knows the base; every other key of the user kept as
written) and appends what it knows under a ``## PEFT Hub`` heading after the user's text.
Without a README the card is the hub's front matter, a title and that section. A front
matter the hub cannot read (bad YAML, not a mapping, anchors, too long) is kept as text
under the hub's own front matter, with a note in that section saying why; never an error.
Values in its tables are plain (``q_proj, v_proj``, ``yes``), never JSON.
Deterministic: the same version (and README) always renders the same bytes (its ETag is their sha256).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection
from dataclasses import dataclass

import yaml
from django.core.cache import cache

from pefthub_server.registry.models import Repository, Version
from pefthub_server.registry.serving import serving_facts
from pefthub_server.registry.storage import get_blob_store

#: a pushed README longer than this is served as pushed: the hub merges into it only below this size
MAX_README = 1 << 20
#: front matter longer than this is kept as text, not parsed
MAX_FRONT_MATTER = 64 << 10
HEADING = "## PEFT Hub"
#: the keys whose values the hub knows for certain: its own replace the user's
HUB_KEYS = ("library_name", "base_model", "base_model_relation")


def readme_bytes(sha256: str, size: int) -> bytes:
    """A pushed README's bytes, cached by hash: read from the store once, not on every page or /hf request."""
    key = f"card:readme:{sha256}"
    data = cache.get(key)
    if data is None:
        data = get_blob_store().read_range(sha256, 0, size)
        cache.set(key, data, timeout=24 * 3600)
    return data


@dataclass(frozen=True)
class Card:
    data: dict  # the front matter, as `cardData` shows it
    text: bytes


def card_data(version: Version, *, readable: Collection[str]) -> dict:
    """The hub's own front matter keys for ``version``, from the database alone (listings use it too).

    ``readable``: which of the repositories its lineage names the reader may read (``selectors.readable_names``
    of ``lineage.named``); the others are never named (``registry.lineage``).
    """
    repo = version.repository
    lineage = (version.metadata or {}).get("lineage") or {}
    data: dict = {"tags": ["pefthub"]}
    if repo.kind == Repository.Kind.ADAPTER:
        data["library_name"] = "peft"
        data["base_model"] = repo.base_model.full_name if repo.base_model_id else None
        data["base_model_relation"] = "adapter"
        peft_type = (version.adapter_config or {}).get("peft_type")
        data["tags"] += ["peft", *(["lora"] if peft_type == "LORA" else [str(peft_type or "").lower()])]
    elif repo.kind == Repository.Kind.MODEL:
        data["library_name"] = "transformers"
        base = (lineage.get("base_model") or {}).get("repo")
        if base and base in readable:
            data["base_model"] = base
            data["base_model_relation"] = "merge"
        data["tags"] += ["safetensors"]
    data["tags"] = [t for t in data.pop("tags") if t]  # last, as the Hub orders its front matter
    return {k: v for k, v in data.items() if v is not None}


def render_card(version: Version, *, hub_url: str, readable: Collection[str], readme: bytes | None = None) -> Card:
    """The card of ``version``: the pushed ``readme`` (if any) with the hub's keys merged in and its facts appended.

    ``readable`` as for :func:`card_data`: a lineage pin of a repository not in it is said to be one the reader
    cannot read, so the card of a public adapter never names a private dataset.
    """
    hub = card_data(version, readable=readable)
    if readme is None:
        body, user, problem = _title(version), {}, None
    else:
        body, user, problem = _split(readme.decode("utf-8", errors="replace"))
    data = _merge(user, hub)
    section = _section(version, hub_url=hub_url, readable=readable)
    if problem:
        section = section.replace(f"{HEADING}\n\n", f"{HEADING}\n\n> The README's front matter was kept as text: {problem}. "
                                  "The hub's keys are in the front matter above; fix the YAML between the `---` lines "
                                  "to have yours merged in.\n\n", 1)
    front = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=4096)
    text = f"---\n{front}---\n\n" + (f"{body.rstrip()}\n\n" if body.strip() else "") + section
    return Card(data=data, text=text.encode())


def _title(version: Version) -> str:
    repo = version.repository
    return f"# {repo.full_name}\n\n{repo.description}" if repo.description else f"# {repo.full_name}"


# --- the user's README --------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a few bytes of them expand to gigabytes once written out as JSON."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            raise yaml.YAMLError("anchors and aliases (`&`, `*`) are not accepted")
        return super().compose_node(parent, index)


def _split(text: str) -> tuple[str, dict, str | None]:
    """(the text after the front matter, the front matter, None) or (the whole text, {}, why it was not read)."""
    lines = text.split("\n")
    if lines[0].rstrip() != "---":
        return text, {}, None
    end, size = None, 0
    for i, line in enumerate(lines[1:], 1):
        if line.rstrip() == "---":
            end = i
            break
        size += len(line) + 1
        if size > MAX_FRONT_MATTER:
            return text, {}, f"it is longer than {MAX_FRONT_MATTER // 1024} KiB"
    if end is None:
        return text, {}, "it has no closing `---` line"
    try:
        data = yaml.load("\n".join(lines[1:end]), Loader=_Loader)  # a SafeLoader without aliases
    except yaml.YAMLError as exc:
        return text, {}, f"it is not valid YAML ({str(exc).splitlines()[0][:200]})"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return text, {}, f"it is a YAML {type(data).__name__}, not a mapping of keys to values"
    if not _plain(data):
        return text, {}, "it holds values other than text, numbers, dates, lists and mappings with text keys"
    return "\n".join(lines[end + 1 :]), data, None


def _plain(value, depth: int = 0) -> bool:
    """Only what JSON (cardData) and YAML both write back unchanged, nested at most 32 deep."""
    if depth > 32:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, bool, int, float, datetime.date))


def _merge(user: dict, hub: dict) -> dict:
    merged = dict(user)
    for key in HUB_KEYS:
        if key in hub:
            merged[key] = hub[key]
    theirs = user.get("tags")
    theirs = [theirs] if isinstance(theirs, str) else theirs if isinstance(theirs, list) else []
    theirs = [str(t) for t in theirs if not isinstance(t, dict | list)]
    if "base_model" in hub:  # peft writes `base_model:adapter:<the local path it trained from>`: the hub knows better
        theirs = [t for t in theirs if not t.startswith("base_model:")]
    merged["tags"] = list(dict.fromkeys([*theirs, *hub["tags"]]))
    return merged


# --- what the hub knows -------------------------------------------------------------------------------


def _plain_value(value) -> str | None:
    """A table cell as a reader wants it: `q_proj, v_proj`, `yes`, `16`; never JSON quotes."""
    if value is None or value in ("", [], {}):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value).replace("\n", " ").replace("|", "\\|")


def _table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "| --- | --- |"]
    out += [f"| {k} | {cell} |" for k, v in rows if (cell := _plain_value(v)) is not None]
    return "\n".join(out)


def _section(version: Version, *, hub_url: str, readable: Collection[str]) -> str:
    repo = version.repository
    meta = version.metadata or {}
    lineage = meta.get("lineage") or {}
    adapter = version.adapter_config or {}
    rows: list[tuple[str, object]] = [
        ("version", f"{version.number} (`sha256:{version.digest}`)"),
        ("kind", repo.kind),
        ("pushed by", version.created_by.username if version.created_by_id else None),
        ("message", version.message),
    ]
    if version.base_version_id:
        base = version.base_version
        rows.append(("base model", f"`{base.repository.full_name}@{base.number}` (`sha256:{base.digest}`)"))
    if adapter:
        rows += [("method", adapter.get("peft_type") + (" (DoRA)" if adapter.get("use_dora") else "")),
                 ("rank", adapter.get("r")), ("alpha", adapter.get("lora_alpha")),
                 ("target modules", adapter.get("target_modules")), ("task", adapter.get("task_type"))]
    if lineage:
        rows += [("training job", lineage.get("job")), ("training method", lineage.get("method")),
                 ("training data", _pin(lineage.get("dataset"), readable)),
                 ("quantization in training", lineage.get("quantization")),
                 ("merged adapters", [p for a in lineage.get("adapters") or [] if (p := _pin(a, readable))]),
                 ("combination", lineage.get("combination"))]
    parts = [HEADING, "", _table(rows), ""]
    metrics = meta.get("metrics")
    if metrics:
        parts += ["### Metrics", "", _table(sorted(metrics.items())), ""]
    if lineage.get("hyperparameters"):
        parts += ["### Hyperparameters", "", "```json", json.dumps(lineage["hyperparameters"], indent=2, sort_keys=True),
                  "```", ""]
    facts = serving_facts(adapter or None)
    if facts:
        parts += ["### Serving", "", _table([(k.replace("_", " "), v) for k, v in facts.items()]), ""]
    return "\n".join(parts + _how_to_load(version, hub_url=hub_url))


def _how_to_load(version: Version, *, hub_url: str) -> list[str]:
    repo = version.repository
    ref = f"{repo.full_name}@{version.number}"
    dataset = repo.kind == Repository.Kind.DATASET
    sdk = f'folder = Hub().pull("{ref}")' if dataset else f'model = Hub().load("{ref}")'
    parts = ["### How to load it", "", "With the PEFT Hub SDK:", "", "```python", "from pefthub import Hub", sdk, "```", "",
             f"With {'datasets' if dataset else 'peft or transformers'}, pointing Hugging Face tools at the hub:", "",
             "```bash", f"export HF_ENDPOINT={hub_url}/hf HF_TOKEN=<your hub token>", "```", "", "```python"]
    if dataset:
        parts += ["from datasets import load_dataset",
                  f'dataset = load_dataset("{repo.full_name}", revision="{version.number}")']
    elif repo.kind == Repository.Kind.ADAPTER:
        parts += ["from peft import AutoPeftModelForCausalLM",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo.full_name}", revision="{version.number}")']
    else:
        parts += ["from transformers import AutoModelForCausalLM",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo.full_name}", revision="{version.number}")']
    return parts + ["```", ""]


def _pin(pin, readable: Collection[str]) -> str | None:
    if not isinstance(pin, dict):
        return None
    if pin.get("repo") not in readable:
        return "a repository you cannot read"
    return f"`{pin.get('repo')}@{pin.get('number')}` ({pin.get('digest')})"
