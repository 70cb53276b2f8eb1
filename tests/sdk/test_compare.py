"""hub.compare's rows: training metrics, then evaluations matched by dataset pin (the newest per pin)."""

from __future__ import annotations

import pytest

from pefthub.compare import Comparison
from pefthub.models import Version


def _version(number: int, training: dict, evaluations: list[dict]) -> Version:
    return Version.from_json({"repo": "acme/bot", "number": number, "digest": "sha256:" + "0" * 64,
                              "metadata": {"metrics": training, "lineage": {}}, "evaluations": evaluations})


def _eval(dataset: str, number: int, metrics: dict, file: str | None = None) -> dict:
    return {"dataset": {"repo": dataset, "number": number, "digest": "sha256:" + "1" * 64}, "dataset_file": file,
            "metrics": metrics, "job": "ab" * 16, "created_at": "2026-12-05T14:00:00Z"}


def test_rows_match_evaluations_by_dataset_pin_and_take_the_newest():
    a = _version(1, {"final_loss": 2.0, "steps": 10}, [
        _eval("acme/heldout", 2, {"loss": 1.5, "exact_match": 0.25}),  # newest first, as the API lists them
        _eval("acme/heldout", 2, {"loss": 9.0}),
        _eval("acme/heldout", 1, {"loss": 1.9}),
    ])
    b = _version(2, {"final_loss": 1.0, "steps": 30, "eval_loss": 1.2}, [
        _eval("acme/heldout", 2, {"loss": 1.25, "exact_match": 0.5}),
        _eval("acme/other", 1, {"loss": 3.0}, file="test.jsonl"),
    ])
    c = Comparison.of(a, b)
    shown = [(r.group, r.metric, r.a, r.b, r.delta) for r in c.rows]
    assert shown == [  # groups: training, then datasets as the versions list them; metrics by name
        ("training", "eval_loss", None, 1.2, None), ("training", "final_loss", 2.0, 1.0, -1.0),
        ("training", "steps", 10, 30, 20),
        ("acme/heldout@2", "exact_match", 0.25, 0.5, 0.25), ("acme/heldout@2", "loss", 1.5, 1.25, -0.25),
        ("acme/heldout@1", "loss", 1.9, None, None),  # v2 was never scored on heldout@1: no delta against @2
        ("acme/other@1:test.jsonl", "loss", None, 3.0, None),
    ]
    assert c.row("acme/heldout@2", "exact_match").delta == pytest.approx(0.25)
    with pytest.raises(KeyError):
        c.row("acme/heldout@2", "perplexity")
    lines = c.table().splitlines()
    assert lines[0].split() == ["GROUP", "METRIC", "acme/bot@1", "acme/bot@2", "DELTA"]
    assert lines[5].split() == ["acme/heldout@2", "loss", "1.5", "1.25", "-0.25"]
    assert lines[6].split() == ["acme/heldout@1", "loss", "1.9", "-", "-"]
    assert c.to_dict()["rows"][2] == {"group": "training", "metric": "steps", "a": 10, "b": 30, "delta": 20}


def test_versions_without_metrics_say_how_to_get_some():
    c = Comparison.of(_version(1, {}, []), _version(2, {}, []))
    assert c.rows == () and "pefthub eval" in str(c)
