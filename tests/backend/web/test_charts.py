"""The run pages' SVG, as pure functions: the loss chart's points, scales and edge cases; the lineage graph's escaping."""

from __future__ import annotations

import math
import re

from pefthub_server.core import charts


def _points(svg: str, key: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(rf'<circle data-series="{key}" cx="([\d.]+)" cy="([\d.]+)"', svg)]


def test_one_point_per_metric_event_with_a_loss():
    events = [{"step": s, "total_steps": 40, "loss": 4.0 - s / 10} for s in range(1, 41)]
    events += [{"step": 0, "eval_loss": 4.2}, {"step": 40, "eval_loss": 3.1}, {"step": 41, "learning_rate": 1e-4}]
    series = charts.loss_series(events)
    assert [len(s.points) for s in series] == [40, 2]
    svg = str(charts.loss_chart(series, title="t"))
    assert len(_points(svg, "loss")) == 40 and len(_points(svg, "eval_loss")) == 2
    assert svg.count("<circle") == 42 and 'data-points="42"' in svg


def test_scales_map_the_data_inside_the_plot_and_lower_loss_is_drawn_lower():
    series = charts.loss_series([{"step": 1, "loss": 2.0}, {"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5}])
    svg = str(charts.loss_chart(series, title="t", width=640, height=280))
    pts = _points(svg, "loss")
    assert all(56 <= x <= 640 - 16 and 28 <= y <= 280 - 40 for x, y in pts)
    assert pts[0][0] < pts[1][0] < pts[2][0] and pts[0][1] < pts[1][1] < pts[2][1]  # SVG y grows downwards
    # ticks are round numbers covering the data
    x_ticks = [float(t) for t in re.findall(r'class="tick-x"[^>]*>([^<]+)<', svg)]
    y_ticks = [float(t) for t in re.findall(r'class="tick-y"[^>]*>([^<]+)<', svg)]
    assert x_ticks[0] <= 1 and x_ticks[-1] >= 20 and y_ticks[0] <= 0.5 and y_ticks[-1] >= 2.0
    assert charts.nice_ticks(0.37, 2.9) == [0.0, 1.0, 2.0, 3.0] and charts.nice_ticks(0.3, 0.7) == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert charts.nice_ticks(1, 1000) == [0, 200, 400, 600, 800, 1000]
    assert charts.nice_ticks(1, 3) == [1.0, 1.5, 2.0, 2.5, 3.0] and charts.nice_ticks(1, 3, whole=True) == [1, 2, 3]


def test_empty_and_one_point_charts():
    empty = str(charts.loss_chart(charts.loss_series([]), title="Loss of job x"))
    assert "No loss reported yet." in empty and "<circle" not in empty and "<title" in empty
    one = str(charts.loss_chart(charts.loss_series([{"step": 3, "loss": 1.25}]), title="t"))
    (x, y), = _points(one, "loss")
    assert math.isfinite(x) and math.isfinite(y) and "nan" not in one.lower() and "inf" not in one.lower()


def test_nan_inf_bools_and_non_numbers_are_skipped_and_stepless_events_take_their_position():
    events = [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": float("inf")}, {"step": 3, "loss": True},
              {"step": 4, "loss": "1.0"}, {"step": 5, "loss": 1.0}, "not an object", {"loss": 0.5},
              {"step": float("-inf"), "loss": 0.25}]
    (loss, eval_loss) = charts.loss_series(events)
    assert loss.points == [(5.0, 1.0), (7.0, 0.5), (8.0, 0.25)] and eval_loss.points == []
    assert "nan" not in str(charts.loss_chart([loss, eval_loss], title="t")).lower()


def test_labels_are_escaped_and_the_chart_is_accessible():
    svg = str(charts.loss_chart(charts.loss_series([{"step": 1, "loss": 1.0}]), title='<script>alert("x")</script>'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'role="img"' in svg and 'aria-labelledby="chart-title chart-desc"' in svg and "training loss: 1 points" in svg


def test_lineage_graph_escapes_names_links_only_what_it_is_given_and_counts_the_rest():
    center = charts.Node("acme/bot@2", "this adapter")
    parents = [charts.Node("acme/<b>base</b>@1", "base model", "/acme/%3Cb%3E/versions/1"),
               charts.Node(charts.HIDDEN, "training data")]
    children = [charts.Node(f"acme/merged-{i}@1", "merge", f"/acme/merged-{i}/versions/1") for i in range(3)]
    svg = str(charts.lineage_graph(center, parents, children, more_children=5))
    assert "<b>" not in svg and "&lt;b&gt;base&lt;/b&gt;" in svg
    assert svg.count("<a ") == 4 and svg.count('class="parent"') == 2 and svg.count('class="child"') == 4
    assert "a repository you cannot see" in svg and "and 5 more" in svg and svg.count("<path") == 6
    assert '<title id="lineage-title">Lineage of acme/bot@2</title>' in svg
    alone = str(charts.lineage_graph(center, [], []))
    assert "<path" not in alone and 'class="current"' in alone


def test_a_resumed_attempt_replaces_the_steps_it_replays():
    # attempt 1 logged steps 1..7 and checkpointed at step 5; attempt 2 resumed there and logged 6..10
    first = [{"step": s, "loss": 10.0 - s} for s in range(1, 8)]
    second = [{"step": s, "loss": 20.0 - s} for s in range(6, 11)]
    (loss, _) = charts.loss_series(first + second)
    assert loss.points == [(float(s), 10.0 - s) for s in range(1, 6)] + [(float(s), 20.0 - s) for s in range(6, 11)]
