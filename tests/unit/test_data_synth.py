"""The synthetic circles: determinism, geometry, colours, outline condition, CLI."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.dataset import load_rows
from t2iops.data.synth import PALETTE, nearest_color, render_sample, sample_rng, synthesize


def files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = load_config(overrides=["data.synth.count=12", "data.synth.resolution=32", "data.synth.seed=7"])
    synthesize(str(tmp_path / "a"), cfg)
    synthesize(str(tmp_path / "b"), cfg)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert len(a) == 12 * 2 + 3  # images, conditions, metadata.jsonl, config, manifest
    manifest_a, manifest_b = json.loads(a.pop("_manifest.json")), json.loads(b.pop("_manifest.json"))
    assert a == b  # the manifest differs only in its creation time
    assert manifest_a["files"] == manifest_b["files"]

    other = load_config(overrides=["data.synth.count=12", "data.synth.resolution=32", "data.synth.seed=8"])
    synthesize(str(tmp_path / "c"), other)
    c = files_of(tmp_path / "c")
    assert c["metadata.jsonl"] != a["metadata.jsonl"]


def test_larger_count_extends_without_changing_first_rows(tmp_path):
    small = load_config(overrides=["data.synth.count=5", "data.synth.resolution=32"])
    large = load_config(overrides=["data.synth.count=9", "data.synth.resolution=32"])
    synthesize(str(tmp_path / "s"), small)
    synthesize(str(tmp_path / "l"), large)
    s_rows = (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()
    l_rows = (tmp_path / "l" / "metadata.jsonl").read_text().splitlines()
    assert l_rows[:5] == s_rows and len(l_rows) == 9
    for i in range(5):
        name = f"images/{i:06d}.png"
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "l" / name).read_bytes()


@pytest.mark.parametrize("resolution", [16, 64, 97])
def test_render_sample_geometry_colours_and_outline(resolution):
    cfg = load_config().data.synth
    for index in range(20):
        image, condition, meta = render_sample(sample_rng(3, index), resolution, cfg)
        assert image.size == condition.size == (resolution, resolution)
        assert image.mode == condition.mode == "RGB"
        color, background = meta["color"], meta["background"]
        assert color in PALETTE and background in PALETTE and color != background
        assert meta["text"] == f"{color} circle with {background} background"
        cx, cy, r = meta["circle"]["cx"], meta["circle"]["cy"], meta["circle"]["r"]
        assert 0 <= cx - r and cx + r < resolution and 0 <= cy - r and cy + r < resolution

        pixels = np.asarray(image)
        assert tuple(pixels[cy, cx]) == PALETTE[color]
        yy, xx = np.mgrid[:resolution, :resolution]
        dist = np.hypot(xx - cx, yy - cy)
        assert (pixels[dist > r + 1.5] == PALETTE[background]).all()
        assert (pixels[dist < r - 1.5] == PALETTE[color]).all()

        ring = np.asarray(condition)
        assert (ring[..., 0] == ring[..., 1]).all() and (ring[..., 1] == ring[..., 2]).all()  # one channel
        assert set(np.unique(ring)) <= {0, 255}  # clean: no anti-aliasing grey
        white = ring[..., 0] == 255
        width = min(cfg.outline_width, r)
        assert white.sum() >= 2 * math.pi * r * 0.8  # a closed ring, not a few dots
        assert (dist[white] <= r + 1.0).all() and (dist[white] >= r - width - 1.0).all()


def test_palette_is_distinct_and_nearest_colour_recovers_names():
    assert 8 <= len(PALETTE) <= 10
    for a, b in itertools.combinations(PALETTE, 2):
        assert math.dist(PALETTE[a], PALETTE[b]) >= 100, (a, b)
    for name, rgb in PALETTE.items():
        assert nearest_color(rgb) == name
        assert nearest_color(tuple(c + 20 if c < 200 else c - 20 for c in rgb)) == name


def test_rows_carry_geometry_and_load_back(tmp_path):
    cfg = load_config(overrides=["data.synth.count=6", "data.synth.resolution=48"])
    summary = synthesize(str(tmp_path / "d"), cfg)
    assert summary["count"] == 6 and sum(summary["colors"].values()) == 6
    rows = load_rows(str(tmp_path / "d"), cfg)
    assert [r.id for r in rows] == [f"{i:06d}" for i in range(6)]
    for row in rows:
        image = np.asarray(row.load_image())
        c = row.meta["circle"]
        assert tuple(image[c["cy"], c["cx"]]) == PALETTE[row.meta["color"]]
        far_corner = max(((0, 0), (0, 47), (47, 0), (47, 47)), key=lambda p: math.dist(p, (c["cy"], c["cx"])))
        assert nearest_color(image[far_corner]) == row.meta["background"]
        assert row.text == f"{row.meta['color']} circle with {row.meta['background']} background"
        assert row.load_condition().size == (48, 48)


def test_custom_column_names_are_used(tmp_path):
    overrides = ["data.synth.count=3", "data.synth.resolution=32", "data.caption_column=prompt",
                 "data.image_column=target", "data.conditioning_image_column=source", "data.id_column=key"]
    cfg = load_config(overrides=overrides)
    synthesize(str(tmp_path / "d"), cfg)
    first = json.loads((tmp_path / "d" / "metadata.jsonl").read_text().splitlines()[0])
    assert {"key", "target", "source", "prompt"} <= set(first) and "text" not in first
    rows = load_rows(str(tmp_path / "d"), cfg)
    assert rows[0].id == "000000" and rows[0].text == first["prompt"]


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "circles"
    rc = main(["data", "synth", "--out", str(out), "-S", "data.synth.count=4", "-S", "data.synth.resolution=24"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 4 and summary["resolution"] == 24
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 4
    assert "count: 4" in (out / "config.resolved.yaml").read_text()

    rc = main(["data", "synth", "--out", str(tmp_path / "x"), "-S", "data.synth.count=0"])
    assert rc == 2 and "data.synth.count" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _digest(root):
    import hashlib

    h = hashlib.sha256()
    for name, data in files_of(root).items():
        if name not in ("_manifest.json", "config.resolved.yaml"):
            h.update(name.encode())
            h.update(data)
    return h.hexdigest()


def test_square_canvases_are_the_dataset_as_it_was_before_aspect_ratios(tmp_path):
    # The digest of these files as written before data.synth.aspect_ratios existed: the demo's
    # measured figures were made on that data.
    cfg = load_config(overrides=["data.synth.count=9", "data.synth.resolution=40", "data.synth.seed=3",
                                 "data.synth.aspect_ratios=[1.0]"])
    synthesize(str(tmp_path / "s"), cfg)
    assert _digest(tmp_path / "s") == "ea89cd72e4467af96f299a9921d30314629d5c3aacfbf38e54c4958f4d87699e"


def test_aspect_ratios_are_drawn_in_turn_on_canvases_of_the_same_area(tmp_path):
    from PIL import Image

    from t2iops.data.synth import canvas_size

    assert canvas_size(64, 1.0) == (64, 64) and canvas_size(60, 1.0) == (60, 60)
    assert canvas_size(64, 2.0) == (88, 48) and canvas_size(64, 0.5) == (48, 88)  # 90.5 x 45.3 -> multiples of 8
    assert canvas_size(1024, 16 / 9) == (1368, 768)
    cfg = load_config(overrides=["data.synth.count=6", "data.synth.resolution=64", "data.synth.aspect_ratios=[1.0, 2.0, 0.5]"])
    summary = synthesize(str(tmp_path / "s"), cfg)
    assert summary["canvases"] == [[64, 64], [88, 48], [48, 88]]
    rows = [json.loads(line) for line in (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        width, height = [(64, 64), (88, 48), (48, 88)][i % 3]
        image = np.asarray(Image.open(tmp_path / "s" / row["image"]).convert("RGB"))
        outline = np.asarray(Image.open(tmp_path / "s" / row["conditioning_image"]))
        assert image.shape == (height, width, 3) and outline.shape == (height, width)
        cx, cy, r = row["circle"]["cx"], row["circle"]["cy"], row["circle"]["r"]
        assert r <= cx <= width - 1 - r and r <= cy <= height - 1 - r  # the whole circle is on the canvas
        assert tuple(image[cy, cx]) == PALETTE[row["color"]]  # the disc is where the row says
        ys, xs = np.nonzero(outline == 255)
        assert abs(xs.mean() - cx) < 1 and abs(ys.mean() - cy) < 1  # the outline is drawn around it
    # The square samples of a mixed dataset are those of the square dataset.
    square = load_config(overrides=["data.synth.count=6", "data.synth.resolution=64"])
    synthesize(str(tmp_path / "q"), square)
    for i in (0, 3):
        assert (tmp_path / "s" / f"images/{i:06d}.png").read_bytes() == (tmp_path / "q" / f"images/{i:06d}.png").read_bytes()
