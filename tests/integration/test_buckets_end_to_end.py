"""A folder of mixed sizes through the command line, every stage, with aspect-ratio buckets.

The user's dataset is drawn here with PIL: 3:2 photos, 9:16 phone shots and squares, each a
filled ellipse on a coloured canvas with its outline on black as the condition. `t2iops data
validate`, `encode`, `train`, `evaluate` and `export` run as processes on it with the toy preset,
a tiny random SDXL model and `encode.buckets=auto` at resolution 64. Nothing is cropped square:
the cache holds the wide, tall and square buckets, train reports each, every evaluation sample
is generated at its own bucket and export.json lists the bucket sizes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from t2iops.presets import preset_path

pytestmark = [pytest.mark.slow]

SHAPES = {"photo": (96, 64), "phone": (54, 96), "square": (80, 80)}  # (width, height): 3:2, 9:16, 1:1
SQUARE, TALL, WIDE = "64x64", "80x48", "48x80"  # the auto buckets at 64 they land in (height x width)
OVERRIDES = ["encode.resolution=64", "encode.buckets=auto", "encode.batch_size=8",
             "data.val_fraction=0.2", "data.test_fraction=0.25",
             "train.max_steps=4", "train.batch_size=2", "train.checkpoint_every=2",
             "evaluate.num_samples=6", "evaluate.batch_size=2", "evaluate.num_inference_steps=2",
             "evaluate.conditioning_scales=[1.0]", "evaluate.fid=off", "evaluate.gate.min_circle_iou=null",
             "export.pipeline_check=skip"]


def _draw_dataset(root: Path, count: int = 24) -> None:
    """``count`` rows in the dataset folder layout: metadata.jsonl, images/, conditioning_images/."""
    (root / "images").mkdir(parents=True)
    (root / "conditioning_images").mkdir()
    rows = []
    for i in range(count):
        kind = list(SHAPES)[i % 3]
        w, h = SHAPES[kind]
        r = min(w, h) // 4 + i % 4
        cx, cy = w // 2 + i % 5 - 2, h // 2 - i % 3 + 1
        rx, ry = {"photo": (r + 6, r), "phone": (r, r + 6), "square": (r, r)}[kind]
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        image = Image.new("RGB", (w, h), (30 + 5 * i, 60, 200))
        ImageDraw.Draw(image).ellipse(box, fill=(220, 30, 30))
        condition = Image.new("RGB", (w, h), (0, 0, 0))
        ImageDraw.Draw(condition).ellipse(box, outline=(255, 255, 255), width=2)
        name = f"{kind}{i:02d}"
        image.save(root / "images" / f"{name}.png")
        condition.save(root / "conditioning_images" / f"{name}.png")
        rows.append({"id": name, "image": f"images/{name}.png", "conditioning_image": f"conditioning_images/{name}.png",
                     "text": "red ellipse on a blue background"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _t2iops(work: Path, *args: str) -> str:
    """Run one ``t2iops`` command as a user would (toy preset, the overrides above); its log."""
    cmd = [sys.executable, "-m", "t2iops.cli", *args, "--params", str(preset_path("toy"))]
    for override in OVERRIDES:
        cmd += ["-S", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stderr


def test_a_folder_of_mixed_sizes_keeps_its_aspect_ratios_through_every_stage(tmp_path, tiny_sdxl_path):
    data, out = tmp_path / "photos", tmp_path / "out"
    _draw_dataset(data)
    base = ["-S", f"model.base_model={tiny_sdxl_path}"]

    _t2iops(tmp_path, "data", "validate", "--root", str(data), "--out", str(out / "validated"), *base)
    report = json.loads((out / "validated" / "report.json").read_text())
    assert report["good"] == 24 and report["aspect_ratios"]["tall"] == report["aspect_ratios"]["wide"] == 8

    _t2iops(tmp_path, "encode", "--data", str(data), "--validated", str(out / "validated"),
            "--out", str(out / "cache"), *base)
    cache = json.loads((out / "cache" / "cache.json").read_text())
    assert cache["format"] == 3
    names = [f"{h}x{w}" for h, w in cache["buckets"]]
    used = {names[b] for split in cache["samples"].values() for b in split["buckets"]}
    assert used == {SQUARE, TALL, WIDE}, names

    log = _t2iops(tmp_path, "train", "--cache", str(out / "cache"), "--out", str(out / "train"), *base)
    summary = json.loads((out / "train" / "summary.json").read_text())
    trained = {b["bucket"]: b for b in summary["buckets"] if b["samples"]}
    assert set(trained) == {SQUARE, TALL, WIDE}
    assert sum(b["samples_seen"] for b in summary["buckets"]) == summary["samples_seen"] == 8
    assert all(f"bucket {name}:" in log for name in (SQUARE, TALL, WIDE))

    _t2iops(tmp_path, "evaluate", "--adapter", str(out / "train" / "adapter"), "--data", str(data),
            "--validated", str(out / "validated"), "--out", str(out / "evaluate"), *base)
    with open(out / "evaluate" / "samples.csv") as fh:
        samples = list(csv.DictReader(fh))
    assert len(samples) == 6 and {row["bucket"] for row in samples} == {SQUARE, TALL, WIDE}
    for row in samples:
        h, w = (int(side) for side in row["bucket"].split("x"))
        with Image.open(out / "evaluate" / "images" / "adapter@1" / row["file"]) as generated:
            assert generated.size == (w, h), row
        assert row["id"].startswith({SQUARE: "square", TALL: "phone", WIDE: "photo"}[row["bucket"]]), row

    _t2iops(tmp_path, "export", "--adapter", str(out / "train" / "adapter"),
            "--metrics", str(out / "evaluate" / "metrics.json"), "--out", str(out / "export"), *base)
    exported = json.loads((out / "export" / "export.json").read_text())
    assert exported["buckets"]["setting"] == "auto"
    assert {f"{h}x{w}" for h, w in exported["buckets"]["sizes"]} >= {SQUARE, TALL, WIDE}
    assert (out / "export" / "adapter.onnx").exists()
