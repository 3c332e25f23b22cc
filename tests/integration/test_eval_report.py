"""The evaluation report people read: self-contained HTML, the training loss curve, the
conditioning-scale sweep and a grid of the best and the worst samples.

Real pieces (tests/integration/conftest.py): the synthetic dataset, validation, the latent cache,
the project's trainer (3 steps on the tiny SD1.5 model, so the run has a loss history and DVCLive
logs), and the real `evaluate`.
"""
from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from t2iops.evaluate.figures import GRID_HEADER, GRID_LEFT, sweep_charts
from t2iops.evaluate.plots import stack
from t2iops.evaluate.stage import evaluate
from t2iops.evaluate.training_curve import DVCLIVE_LOSS, read_training_curve

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("eval-report")]


def test_html_report_is_self_contained(report_sweep):
    out, _, _ = report_sweep
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and "href=" not in page
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert sorted(embedded) == sorted((out / n).read_bytes() for n in ("grid.png", "loss_curve.png", "sweep.png"))


def test_loss_curve_comes_from_the_training_run(report_sweep, report_trained):
    out, _, _ = report_sweep
    work, _ = report_trained
    losses = json.loads((work / "O" / "summary.json").read_text())["losses"]
    curve = read_training_curve(str(work / "O" / "adapter"))
    assert curve["source"] == str(work / "O" / "summary.json")
    assert curve["steps"] == [1, 2, 3] and curve["loss"] == pytest.approx(losses)
    md = (out / "report.md").read_text()
    assert f"From `{work / 'O' / 'summary.json'}`" in md and "![training loss](loss_curve.png)" in md
    assert Image.open(out / "loss_curve.png").size == (560, 320)


def test_loss_curve_falls_back_to_dvclive_logs_and_says_when_missing(report_trained, tmp_path):
    work, _ = report_trained
    run = tmp_path / "O"
    shutil.copytree(work / "O" / "logs", run / "logs")
    summary = json.loads((work / "O" / "summary.json").read_text())
    del summary["losses"]
    (run / "summary.json").write_text(json.dumps(summary))
    curve = read_training_curve(str(run))
    assert curve["source"] == str(run / DVCLIVE_LOSS)
    assert curve["steps"] == [2, 3]  # train.log_every=2, and the last step

    assert read_training_curve("some-org/some-adapter")["missing"].startswith("the adapter some-org/some-adapter")
    (tmp_path / "plain-adapter").mkdir()
    assert "no training loss history" in read_training_curve(str(tmp_path / "plain-adapter"))["missing"]


def test_sweep_table_and_plot(report_sweep):
    out, metrics, _ = report_sweep
    md = (out / "report.md").read_text()
    section = md.split("## Conditioning-scale sweep")[1].split("##")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| conditioning scale | edge_f1 | circle_iou |")
    # Scale 0 is the row without the adapter (the same images), not a second row.
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| 0 (without adapter)", "| 0.5", "| 1", "| real images"]
    assert metrics["sweep"]["scale_0"]["circle_iou"] == metrics["circle_iou"]["without_adapter"]
    half = float(lines[2].split(" | ")[2].strip("| "))
    assert half == pytest.approx(metrics["sweep"]["scale_0.5"]["circle_iou"], abs=5e-4)
    one = float(lines[3].split(" | ")[2].strip("| "))
    assert one == pytest.approx(metrics["circle_iou"]["with_adapter"], abs=5e-4)
    plot = Image.open(out / "sweep.png")
    assert plot.size == (560, 2 * 320)  # a panel per fidelity metric


def test_sweep_plot_legends_sit_under_the_axes(report_sweep):
    """sweep.png is the stack of :func:`sweep_charts` panels (whose legends tests/unit/
    test_report_plots.py checks pixel by pixel): each legend lies outside its plotting area and
    lists the lines in the order and style they are drawn."""
    out, _, _ = report_sweep
    metrics = json.loads((out / "metrics.json").read_text())
    info = {"variants": ["without_adapter", "adapter@1", "adapter@0", "adapter@0.5"]}
    per_sample = [{"name": "edge_f1", "higher_is_better": True}, {"name": "circle_iou", "higher_is_better": True}]
    charts = sweep_charts(metrics, info, per_sample)
    assert np.array_equal(np.asarray(stack([c.image for c in charts])), np.asarray(Image.open(out / "sweep.png")))
    for chart in charts:
        assert chart.legend[1] > chart.area[3] and chart.legend[3] < chart.image.height
        assert [(s.label, s.dashed) for s, _ in chart.handles] == [(s.label, s.dashed) for s, _ in chart.paths] == [
            ("with adapter", False), ("without adapter", True), ("real images", True)]


def test_grid_shows_the_best_then_the_worst_sample(report_sweep):
    out, _, _ = report_sweep
    samples = list(csv.DictReader(open(out / "samples.csv")))
    ranked = sorted(samples, key=lambda s: (-float(s["circle_iou_with_adapter"]), int(s["index"])))
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    # condition | without adapter (scale 0) | scale 0.5 | scale 1 | real image
    cell, header, left, with_adapter_column = 128, GRID_HEADER, GRID_LEFT, 3
    assert grid.shape[1] == left + 5 * cell
    assert grid.shape[0] == header + 2 * cell
    for row, sample in enumerate([ranked[0], ranked[-1]]):
        expected = Image.open(out / "images" / "adapter@1" / sample["file"]).convert("RGB").resize((cell, cell),
                                                                                                  Image.NEAREST)
        x, y = left + with_adapter_column * cell, header + row * cell
        assert np.array_equal(grid[y:y + cell, x:x + cell], np.asarray(expected)), row
    assert "the best and the worst samples by circle_iou" in (out / "report.md").read_text()


def test_sampling_logs_plain_progress_lines(report_sweep):
    _, _, lines = report_sweep
    assert any(line.startswith("sampling shard 0/1: 1/1 batch (100%)") for line in lines), lines


def test_one_scale_has_no_sweep(report_trained, report_config, tmp_path):
    work, base = report_trained
    cfg = report_config(work, base)
    evaluate(str(work / "O"), str(work / "data"), str(work / "validated"), str(tmp_path / "E"), cfg)
    assert not (tmp_path / "E" / "sweep.png").exists()
    assert "sweep" not in (tmp_path / "E" / "report.md").read_text().lower()
    assert len(re.findall(r'src="data:image/png;base64,', (tmp_path / "E" / "report.html").read_text())) == 2


class _Page(HTMLParser):
    """The report's elements in document order: ``[tag, attrs, text, ids of its ancestors]``,
    text including the element's descendants'."""

    def __init__(self, text: str):
        super().__init__()
        self.elements, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = [tag, dict(attrs), "", [e[1].get("id") for e in self._open if "id" in e[1]]]
        self.elements.append(element)
        if tag not in ("img", "meta", "br"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for element in self._open:
            element[2] += data

    def index(self, test) -> int:
        return next(i for i, e in enumerate(self.elements) if test(e))

    def all(self, test) -> list:
        return [e for e in self.elements if test(e)]


def test_html_report_reads_right_at_a_glance(report_sweep):
    out, metrics, _ = report_sweep
    page = _Page((out / "report.html").read_text())
    body = page.all(lambda e: e[0] in ("p", "table", "dl", "h2", "figure"))

    # The verdict, then the headline, before any table.
    verdict = page.index(lambda e: e[1].get("id") == "verdict")
    first_table = page.index(lambda e: e[0] == "table")
    assert body[0][1].get("id") == "verdict" and body[1][1].get("id") == "headline"
    assert verdict < page.index(lambda e: e[1].get("id") == "headline") < first_table
    assert page.elements[verdict][1]["class"] == "verdict failed"
    iou, (check,) = metrics["circle_iou"], metrics["gate"]["checks"]  # evaluate.gate.min_circle_iou=0.99
    assert page.elements[verdict][2] == (f"Gate FAILED (1 of 1 checks missed): circle_iou {iou['with_adapter']:.3g} "
                                         f"(needs >= {check['threshold']:.3g}).")
    headline = page.all(lambda e: e[1].get("id") == "headline")[0][2]
    assert headline.startswith(f"circle IoU {iou['without_adapter']:.3g} \u2192 {iou['with_adapter']:.3g} with the "
                               "adapter (scale 1;") and headline.endswith(f"real images {iou['real_images']:.3g})")

    # One explanation, one line, per metric the report shows (the table's, and the loss curve).
    shown = [e[2] for e in page.all(lambda e: e[0] == "td" and "metrics" in e[3])][::6]
    assert shown == ["edge_f1", "circle_iou"]
    explained = page.all(lambda e: "data-metric" in e[1])
    assert [e[1]["data-metric"] for e in explained] == ["edge_f1", "circle_iou", "loss"]
    assert all(20 < len(e[2]) < 200 and "\n" not in e[2] for e in explained)
    assert page.index(lambda e: e[1].get("id") == "metric-guide") < first_table

    # The grid's columns in scale order, each once; scale 0 is the column without the adapter.
    columns = [e[2] for e in page.all(lambda e: e[1].get("class") == "grid-column")]
    assert columns == ["condition", "without adapter (scale 0)", "with adapter scale 0.5", "with adapter scale 1",
                       "real image"]
    assert len(set(columns)) == len(columns) and sum("without adapter" in c for c in columns) == 1
    md = (out / "report.md").read_text()
    assert md.index("Gate FAILED") < md.index(headline) < md.index("## What the numbers mean") < md.index("| metric |")
