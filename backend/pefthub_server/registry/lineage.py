"""What a version's ``metadata.lineage`` tells a reader: the repositories it names, hidden where the reader cannot read them.

A job writes lineage as pins ``{"repo": "ns/name", "number", "digest"}``: the base model, the dataset, the adapter
it continued (``parent``) and, for a merge, each adapter (with its weight). A public adapter trained on a private
dataset must not tell everyone the dataset's name, so the API answers each pin of a repository the caller cannot read
as ``{"hidden": true}`` (a merge's weight is kept), as the web pages do. Other metadata is the pusher's own and is
shown as pushed.
"""

from __future__ import annotations

from typing import Any

#: lineage keys holding one pin, and the one holding a list of pins
PIN_KEYS = ("base_model", "dataset", "parent")
LIST_KEY = "adapters"
HIDDEN = {"hidden": True}


def _lineage(metadata: Any) -> dict | None:
    lineage = metadata.get("lineage") if isinstance(metadata, dict) else None
    return lineage if isinstance(lineage, dict) else None


def _pins(lineage: dict) -> list[dict]:
    pins = [lineage[key] for key in PIN_KEYS if isinstance(lineage.get(key), dict)]
    listed = lineage.get(LIST_KEY)
    return pins + [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else pins


def named(metadata: Any) -> set[str]:
    """Every repository name the lineage in ``metadata`` pins."""
    lineage = _lineage(metadata)
    return {p["repo"] for p in _pins(lineage) if isinstance(p.get("repo"), str)} if lineage else set()


def shown(metadata: Any, readable: set[str]) -> Any:
    """``metadata`` with each lineage pin of a repository not in ``readable`` hidden (a copy; the original is kept)."""
    lineage = _lineage(metadata)
    if not lineage or all(p.get("repo") in readable for p in _pins(lineage)):
        return metadata

    def hide(pin: Any) -> Any:
        if not isinstance(pin, dict) or pin.get("repo") in readable:
            return pin
        return {**HIDDEN, "weight": pin["weight"]} if "weight" in pin else dict(HIDDEN)

    out = dict(lineage)
    for key in PIN_KEYS:
        if key in out:
            out[key] = hide(out[key])
    if isinstance(out.get(LIST_KEY), list):
        out[LIST_KEY] = [hide(p) for p in out[LIST_KEY]]
    return {**metadata, "lineage": out}
