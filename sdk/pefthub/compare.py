"""Two versions' metrics side by side: what ``hub.compare(a, b)`` returns and ``pefthub compare`` prints.

Rows come in groups: ``training`` (the metrics the training job recorded), then one group per dataset
the versions were evaluated on, matched by the dataset's pin (``repo@number``, and the file when one
was named): two scores count as comparable only when they were measured on the same bytes. A version
evaluated more than once on one pin shows its newest evaluation; one on a dataset you cannot read is
left out. Within a group, metrics go by name. A metric only one version has is shown with the other
side empty and no delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._table import table
from .models import Version

__all__ = ["Comparison", "MetricRow"]

TRAINING = "training"


@dataclass(frozen=True)
class MetricRow:
    #: ``training``, or the dataset version an evaluation scored (``acme/heldout@2``)
    group: str
    metric: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        """``b - a`` where both versions have the metric."""
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class Comparison:
    a: Version
    b: Version
    rows: tuple[MetricRow, ...]

    @classmethod
    def of(cls, a: Version, b: Version) -> Comparison:
        rows = _rows(TRAINING, a.training_metrics, b.training_metrics)
        evaluated_a, evaluated_b = _by_dataset(a), _by_dataset(b)
        for dataset in [*evaluated_a, *(d for d in evaluated_b if d not in evaluated_a)]:
            rows += _rows(dataset, evaluated_a.get(dataset, {}), evaluated_b.get(dataset, {}))
        return cls(a=a, b=b, rows=tuple(rows))

    def row(self, group: str, metric: str) -> MetricRow:
        """The row of ``metric`` in ``group`` (``"training"`` or a dataset ref); KeyError if neither version has it."""
        for row in self.rows:
            if row.group == group and row.metric == metric:
                return row
        raise KeyError(f"no {metric} in {group}")

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.ref, "b": self.b.ref, "rows": [
            {"group": r.group, "metric": r.metric, "a": r.a, "b": r.b, "delta": r.delta} for r in self.rows]}

    def table(self) -> str:
        """The rows as a plain-text table: GROUP, METRIC, then each version's ref, then DELTA (b - a)."""
        if not self.rows:
            return f"neither {self.a.ref} nor {self.b.ref} has metrics (train with eval_split, or run `pefthub eval`)"
        return table(("GROUP", "METRIC", self.a.ref, self.b.ref, "DELTA"),
                     [(r.group, r.metric, _num(r.a), _num(r.b), _num(r.delta, signed=True)) for r in self.rows])

    def __str__(self) -> str:
        return self.table()


def _by_dataset(version: Version) -> dict[str, dict[str, Any]]:
    """Each evaluated dataset pin -> the newest evaluation's metrics (the API lists them newest first).

    An evaluation on a dataset you cannot read has no pin to match by: it is left out.
    """
    found: dict[str, dict[str, Any]] = {}
    for evaluation in version.evaluations or ():
        if evaluation.dataset:
            found.setdefault(evaluation.dataset_ref, evaluation.metrics)
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rows(group: str, a: dict[str, Any], b: dict[str, Any]) -> list[MetricRow]:
    """One row per metric either side has, by name (the hub's database may keep JSON keys in its own order)."""
    names = sorted({k for k in a if _is_number(a[k])} | {k for k in b if _is_number(b[k])})
    return [MetricRow(group, name, a.get(name) if _is_number(a.get(name)) else None,
                      b.get(name) if _is_number(b.get(name)) else None) for name in names]


def _num(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"
