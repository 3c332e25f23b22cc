"""The report's charts read right: the legend never crosses a plotted line, each legend entry is
drawn as its line is (dashed where the line is dashed), and the sample grid's columns run in
scale order with scale 0 shown once, as the images without the adapter.

The checks look at the drawn pixels, not only at the layout the chart reports."""
from __future__ import annotations

import math

import pytest

from t2iops.evaluate.figures import grid_columns, loss_curve_chart, sweep_charts, sweep_table
from t2iops.evaluate.plots import COLOURS, GREY, Chart, Series, plot

TOL = 40  # how far (per channel) a pixel may be from a series' colour and still be its ink


def _points(a, b, step=1.0):
    n = max(1, int(math.dist(a, b) / step))
    return [(a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n) for i in range(n + 1)]


def _is_ink(image, point, colour, tol=TOL, reach=0) -> bool:
    """Whether the pixel at ``point`` (or one within ``reach`` pixels: a 2 px line drawn at a
    slant does not cover every rounded point of its ideal path) has ``colour``."""
    x, y = round(point[0]), round(point[1])
    return any(max(abs(p - c) for p, c in zip(image.getpixel((x + dx, y + dy)), colour)) <= tol
               for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1))


def _distance_to_path(p, path) -> float:
    best = math.inf
    for a, b in zip(path, path[1:] or path):
        dx, dy = b[0] - a[0], b[1] - a[1]
        t = 0.0 if dx == dy == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.dist(p, (a[0] + t * dx, a[1] + t * dy)))
    return best


def _looks_dashed(image, samples, colour) -> bool:
    """Dashed when the stroke has gaps: runs of 3 or more points in a row (1 px apart) without
    its ink. A solid 2 px line has none, even at a slant."""
    inked = [_is_ink(image, p, colour, reach=1) for p in samples]
    assert sum(inked) > 0.3 * len(inked), f"the stroke is hardly drawn ({sum(inked)} of {len(inked)} points)"
    gaps, run = 0, 0
    for ink in inked + [True]:
        gaps += ink and run >= 3
        run = 0 if ink else run + 1
    return gaps > 0


def check_legend(chart: Chart) -> None:
    """The legend box crosses no line (nor its markers or width), no line's ink shows inside it
    except the handles, and each handle is dashed exactly when its line is."""
    assert chart.legend is not None and len(chart.handles) == len(chart.paths)
    x0, y0, x1, y1 = chart.legend
    assert 0 <= x0 < x1 < chart.image.width and 0 <= y0 < y1 < chart.image.height
    margin = 4  # half the line width plus a marker's radius
    for s, path in chart.paths:
        for a, b in zip(path, path[1:] or path):
            for p in _points(a, b, 0.5):
                inside = x0 - margin <= p[0] <= x1 + margin and y0 - margin <= p[1] <= y1 + margin
                assert not inside, f"the line {s.label!r} runs through the legend at {p}"
    handles = {s.label: h for s, h in chart.handles}
    for s, _ in chart.paths:
        if s.colour == GREY:
            continue  # anti-aliased text has greys of its own
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                if _is_ink(chart.image, (x, y), s.colour, tol=0):
                    assert _distance_to_path((x, y), list(handles[s.label])) <= margin, \
                        f"ink of {s.label!r} inside the legend at {(x, y)}, away from its handle"
    for s, path in chart.paths:
        others = [p for t, p in chart.paths if t is not s]
        along = [p for a, b in zip(path, path[1:]) for p in _points(a, b)]
        clear = [p for p in along if all(_distance_to_path(p, o) > 5 for o in others)]
        handle = _points(*handles[s.label])
        handle_dashed = _looks_dashed(chart.image, handle[2:-2], s.colour)
        assert handle_dashed == s.dashed, f"the legend draws {s.label!r} {'dashed' if handle_dashed else 'solid'}"
        if len(clear) >= 20:  # where another line covers it, its own pixels say nothing
            line_dashed = _looks_dashed(chart.image, clear, s.colour)
            assert line_dashed == handle_dashed, f"{s.label!r}: the line and its legend entry differ"


def test_legend_stays_clear_of_lines_that_fill_the_plot():
    # Lines along the top and bottom edges, a diagonal and a zig-zag: wherever a legend sits
    # inside the plotting area, one of them runs through it.
    xs = [0.0, 0.5, 1.0, 1.5]
    chart = plot([Series("with adapter", xs, [0.1, 0.9, 0.2, 0.95], COLOURS[0], markers=True),
                  Series("without adapter", [0, 1.5], [0.0, 0.0], GREY, dashed=True),
                  Series("real images", [0, 1.5], [1.0, 1.0], COLOURS[2], dashed=True),
                  Series("diagonal", [0, 1.5], [0.0, 1.0], COLOURS[3])],
                 "t", "x", "y", x_ticks=xs)
    check_legend(chart)
    assert chart.legend[1] > chart.area[3]  # under the axes, not in the plotting area


def test_legend_wraps_long_entries_inside_the_image():
    series = [Series(f"a rather long series label number {k}", [0, 1], [k, k + 1], COLOURS[k % 6], dashed=k % 2 == 1)
              for k in range(6)]
    chart = plot(series, "t", "x", "y")
    check_legend(chart)
    rows = {y for _, ((_, y), _) in chart.handles}
    assert len(rows) > 1 and chart.image.size == (560, 320)


def _sweep_inputs(lift: float):
    info = {"variants": ["without_adapter", "adapter@1", "adapter@0", "adapter@0.5", "adapter@1.5"]}
    per_sample = [{"name": "edge_f1", "higher_is_better": True}, {"name": "depth_rmse", "higher_is_better": False}]
    metrics = {
        "edge_f1": {"with_adapter": 0.1 + lift, "without_adapter": 0.1, "lift": lift, "real_images": 0.5},
        "depth_rmse": {"with_adapter": 30 - 40 * lift, "without_adapter": 30.0, "lift": -40 * lift},
        "sweep": {"scale_0": {"edge_f1": 0.1, "depth_rmse": 30.0},
                  "scale_0.5": {"edge_f1": 0.1 + lift / 2, "depth_rmse": 30 - 20 * lift},
                  "scale_1.5": {"edge_f1": 0.1 + lift * 1.2, "depth_rmse": 30 - 45 * lift}},
    }
    return metrics, info, per_sample


@pytest.mark.parametrize("lift", [0.3, 0.0])  # 0: the adapter's line lies on the "without" one
def test_sweep_panels_legends_match_their_lines(lift):
    metrics, info, per_sample = _sweep_inputs(lift)
    charts = sweep_charts(metrics, info, per_sample)
    assert len(charts) == 2
    for chart in charts:
        check_legend(chart)
    assert [s.label for s, _ in charts[0].handles] == ["with adapter", "without adapter", "real images"]
    assert [s.dashed for s, _ in charts[0].handles] == [False, True, True]
    assert [s.label for s, _ in charts[1].handles] == ["with adapter", "without adapter"]  # no real-image value


def test_long_loss_curve_legend_matches_its_lines():
    steps = list(range(1, 201))
    chart = loss_curve_chart({"steps": steps, "loss": [1 / s + 0.05 * (s % 7) for s in steps]})
    check_legend(chart)
    assert loss_curve_chart({"steps": [1, 2], "loss": [1.0, 0.5]}).legend is None  # one line: the title names it


def test_grid_columns_in_scale_order_with_scale_zero_once():
    info = {"variants": ["without_adapter", "adapter@1", "adapter@0", "adapter@0.5", "adapter@1.5"]}
    columns = grid_columns(info, with_real=True)
    assert [k for k, _ in columns] == ["condition", "without_adapter", "adapter@0.5", "adapter@1", "adapter@1.5",
                                       "real_images"]
    labels = [label.replace("\n", " ") for _, label in columns]
    assert labels == ["condition", "without adapter (scale 0)", "with adapter scale 0.5", "with adapter scale 1",
                      "with adapter scale 1.5", "real image"]
    assert len(set(labels)) == len(labels)
    assert [k for k, _ in grid_columns({"variants": ["without_adapter", "adapter@1"]}, with_real=False)] == \
        ["condition", "without_adapter", "adapter@1"]


def test_sweep_table_shows_scale_zero_as_the_row_without_adapter():
    metrics, info, _ = _sweep_inputs(0.3)
    rows = sweep_table(metrics, info, ["edge_f1"])
    assert [r[0] for r in rows] == ["0 (without adapter)", 0.5, 1.0, 1.5, "real images"]
    assert rows[0][1] == 0.1 and rows[2][1] == pytest.approx(0.4)
    rows = sweep_table(metrics, {"variants": ["without_adapter", "adapter@1", "adapter@0.5"]}, ["edge_f1"])
    assert [r[0] for r in rows] == ["without adapter", 0.5, 1.0, "real images"]
