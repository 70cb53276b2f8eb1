"""The model card (README.md) every version shows in the Hugging Face view.

YAML front matter as the Hub writes it (``library_name``, ``base_model``,
``base_model_relation``, ``tags``), then what a user needs to trust and load the
version: base, method, rank, targets, data digest, metrics, lineage, serving facts.
Deterministic: the same version always renders the same bytes (its ETag is their sha256).
"""

from __future__ import annotations

import json
import re

from pefthub_server.registry.models import Repository, Version
from pefthub_server.registry.serving import serving_facts

_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9._/-]*$")


def _yaml_scalar(value) -> str:
    """Plain like the Hub writes (`library_name: peft`); JSON-quoted when YAML could misread it."""
    return value if isinstance(value, str) and _PLAIN.match(value) and value not in ("yes", "no", "true", "false", "null") \
        else json.dumps(value)


def card_data(version: Version) -> dict:
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
        if base:
            data["base_model"] = base
            data["base_model_relation"] = "merge"
        data["tags"] += ["safetensors"]
    data["tags"] = [t for t in data.pop("tags") if t]  # last, as the Hub orders its front matter
    return {k: v for k, v in data.items() if v is not None}


def _front_matter(data: dict) -> str:
    lines = ["---"]
    for key, value in data.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {_yaml_scalar(v)}" for v in value]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    lines.append("---")
    return "\n".join(lines)


def _table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows if v not in (None, "", [], {})]
    return "\n".join(out)


def render_card(version: Version, *, hub_url: str) -> bytes:
    repo = version.repository
    ref = f"{repo.full_name}@{version.number}"
    meta = version.metadata or {}
    lineage = meta.get("lineage") or {}
    adapter = version.adapter_config or {}
    parts = [_front_matter(card_data(version)), "", f"# {repo.full_name}", ""]
    if repo.description:
        parts += [repo.description, ""]
    rows: list[tuple[str, object]] = [
        ("version", f"{version.number} (`sha256:{version.digest}`)"),
        ("kind", repo.kind),
        ("pushed by", version.created_by.username if version.created_by_id else None),
        ("message", version.message.replace("\n", " ") if version.message else None),
    ]
    if version.base_version_id:
        base = version.base_version
        rows.append(("base model", f"`{base.repository.full_name}@{base.number}` (`sha256:{base.digest}`)"))
    if adapter:
        rows += [("method", adapter.get("peft_type") + (" (DoRA)" if adapter.get("use_dora") else "")),
                 ("rank", adapter.get("r")), ("alpha", adapter.get("lora_alpha")),
                 ("target modules", json.dumps(adapter.get("target_modules"))), ("task", adapter.get("task_type"))]
    if lineage:
        rows += [("training job", lineage.get("job")), ("training method", lineage.get("method")),
                 ("training data", _pin(lineage.get("dataset"))), ("quantization in training", lineage.get("quantization")),
                 ("merged adapters", ", ".join(_pin(a) for a in lineage.get("adapters") or []) or None),
                 ("combination", lineage.get("combination"))]
    parts += [_table(rows), ""]
    metrics = meta.get("metrics")
    if metrics:
        parts += ["## Metrics", "", _table([(k, v) for k, v in sorted(metrics.items())]), ""]
    if lineage.get("hyperparameters"):
        parts += ["## Hyperparameters", "", "```json", json.dumps(lineage["hyperparameters"], indent=2, sort_keys=True), "```", ""]
    facts = serving_facts(adapter or None)
    if facts:
        parts += ["## Serving", "", _table([(k.replace("_", " "), json.dumps(v)) for k, v in facts.items()]), ""]
    parts += ["## How to load it", "", "With the PEFT Hub SDK:", "", "```python", "from pefthub import Hub",
              f'model = Hub().load("{ref}")', "```", "",
              "With peft or transformers, pointing Hugging Face tools at the hub:", "", "```bash",
              f"export HF_ENDPOINT={hub_url}/hf HF_TOKEN=<your hub token>", "```", "", "```python"]
    if repo.kind == Repository.Kind.ADAPTER:
        parts += ["from peft import AutoPeftModelForCausalLM",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo.full_name}", revision="{version.number}")']
    else:
        parts += ["from transformers import AutoModelForCausalLM",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo.full_name}", revision="{version.number}")']
    parts += ["```", ""]
    return "\n".join(parts).encode()


def _pin(pin) -> str | None:
    if not isinstance(pin, dict):
        return None
    return f"`{pin.get('repo')}@{pin.get('number')}` ({pin.get('digest')})"
