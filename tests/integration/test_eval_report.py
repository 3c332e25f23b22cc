"""The evaluation report people read: self-contained HTML, the training loss curve, the
conditioning-scale sweep and a grid of the best and the worst samples.

Real pieces: the synthetic dataset, validation, the latent cache, the project's trainer (3 steps on
the tiny SD1.5 model, so the run has a loss history and DVCLive logs), and the real `evaluate`.
"""
from __future__ import annotations

import base64
import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2iops.evaluate.stage import evaluate
from t2iops.evaluate.training_curve import DVCLIVE_LOSS, read_training_curve
from t2iops.presets import preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

SCALES = "[1.0,0.0,0.5]"  # the first is the headline; the sweep is shown sorted


def _cfg(work: Path, base: str, *extra: str):
    return preset_config("toy", [  # CPU-sized, with cubic timesteps, guidance 5, one scale, no gate
        "train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]",
        "evaluate.gate.min_circle_iou=null",
        f"model.base_model={base}", "data.synth.count=12", "data.synth.resolution=64",
        "data.val_fraction=0", "data.test_fraction=0.5",
        "encode.resolution=64", "encode.batch_size=12",
        "train.max_steps=3", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=1000",
        "train.validate_every=0",
        "evaluate.num_samples=4", "evaluate.batch_size=4", "evaluate.num_inference_steps=1", "evaluate.fid=off",
        "evaluate.grid_rows=2", f"storage.cache_dir={work / 'cache'}", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tiny_sd15_path, tmp_path_factory):
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.train.trainer import train

    work = tmp_path_factory.mktemp("report")
    cfg = _cfg(work, tiny_sd15_path)
    synthesize(str(work / "data"), cfg)
    validate(str(work / "data"), str(work / "validated"), cfg)
    encode_dataset(str(work / "data"), str(work / "validated"), str(work / "cache-latents"), cfg)
    train(str(work / "cache-latents"), str(work / "O"), cfg)
    return work, tiny_sd15_path


@pytest.fixture(scope="module")
def sweep_run(trained):
    work, base = trained
    cfg = _cfg(work, base, f"evaluate.conditioning_scales={SCALES}")
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # the progress lines, as a pod's log would show them
    logging.getLogger("t2iops.progress").addHandler(handler)
    logging.getLogger("t2iops.progress").setLevel(logging.INFO)
    try:
        metrics = evaluate(str(work / "O" / "adapter"), str(work / "data"), str(work / "validated"),
                           str(work / "E"), cfg)
    finally:
        logging.getLogger("t2iops.progress").removeHandler(handler)
    return work / "E", metrics, [r.getMessage() for r in records]


def test_html_report_is_self_contained(sweep_run):
    out, _, _ = sweep_run
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and "href=" not in page
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert sorted(embedded) == sorted((out / n).read_bytes() for n in ("grid.png", "loss_curve.png", "sweep.png"))


def test_loss_curve_comes_from_the_training_run(sweep_run, trained):
    out, _, _ = sweep_run
    work, _ = trained
    losses = json.loads((work / "O" / "summary.json").read_text())["losses"]
    curve = read_training_curve(str(work / "O" / "adapter"))
    assert curve["source"] == str(work / "O" / "summary.json")
    assert curve["steps"] == [1, 2, 3] and curve["loss"] == pytest.approx(losses)
    md = (out / "report.md").read_text()
    assert f"From `{work / 'O' / 'summary.json'}`" in md and "![training loss](loss_curve.png)" in md
    assert Image.open(out / "loss_curve.png").size == (560, 320)


def test_loss_curve_falls_back_to_dvclive_logs_and_says_when_missing(trained, tmp_path):
    work, _ = trained
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


def test_sweep_table_and_plot(sweep_run):
    out, metrics, _ = sweep_run
    md = (out / "report.md").read_text()
    section = md.split("## Conditioning-scale sweep")[1].split("##")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| conditioning scale | edge_f1 | circle_iou |")
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| without adapter", "| 0", "| 0.5", "| 1",
                                                          "| real images"]
    half = float(lines[3].split(" | ")[2].strip("| "))
    assert half == pytest.approx(metrics["sweep"]["scale_0.5"]["circle_iou"], abs=5e-4)
    one = float(lines[4].split(" | ")[2].strip("| "))
    assert one == pytest.approx(metrics["circle_iou"]["with_adapter"], abs=5e-4)
    plot = Image.open(out / "sweep.png")
    assert plot.size == (560, 2 * 320)  # a panel per fidelity metric


def test_grid_shows_the_best_then_the_worst_sample(sweep_run):
    out, _, _ = sweep_run
    samples = list(csv.DictReader(open(out / "samples.csv")))
    ranked = sorted(samples, key=lambda s: (-float(s["circle_iou_with_adapter"]), int(s["index"])))
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    cell, header, left, with_adapter_column = 128, 18, 170, 2
    assert grid.shape[0] == header + 2 * cell
    for row, sample in enumerate([ranked[0], ranked[-1]]):
        expected = Image.open(out / "images" / "adapter@1" / sample["file"]).convert("RGB").resize((cell, cell),
                                                                                                  Image.NEAREST)
        x, y = left + with_adapter_column * cell, header + row * cell
        assert np.array_equal(grid[y:y + cell, x:x + cell], np.asarray(expected)), row
    assert "the best and the worst samples by circle_iou" in (out / "report.md").read_text()


def test_sampling_logs_plain_progress_lines(sweep_run):
    _, _, lines = sweep_run
    assert any(line.startswith("sampling shard 0/1: 1/1 batch (100%)") for line in lines), lines


def test_one_scale_has_no_sweep(trained, tmp_path):
    work, base = trained
    cfg = _cfg(work, base)
    evaluate(str(work / "O"), str(work / "data"), str(work / "validated"), str(tmp_path / "E"), cfg)
    assert not (tmp_path / "E" / "sweep.png").exists()
    assert "sweep" not in (tmp_path / "E" / "report.md").read_text().lower()
    assert len(re.findall(r'src="data:image/png;base64,', (tmp_path / "E" / "report.html").read_text())) == 2
