"""`t2iops data annotate`: plain images + captions -> a canny-condition dataset in our format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.annotate import ANNOTATORS, CannyAnnotator, annotate, get_annotator
from t2iops.data.dataset import load_rows, load_validated_ids
from t2iops.data.synth import render_sample, sample_rng
from t2iops.data.validate import validate
from t2iops.errors import DataError, UsageError

RES = 48


@pytest.fixture()
def photos(tmp_path):
    """A folder of plain images (circles, so the right edges are known) in a nested layout,
    and the circle geometry of each."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    synth = load_config().data.synth
    circles = {}
    for i, rel in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        image, _, meta = render_sample(sample_rng(11, i), RES, synth)
        image.save(folder / rel, quality=95) if rel.endswith(".jpg") else image.save(folder / rel)
        circles[rel] = (meta["circle"], meta["text"])
    return folder, circles


def write_captions_jsonl(path, circles, column="text"):
    path.write_text("".join(json.dumps({"file_name": rel, column: text}) + "\n" for rel, (_, text) in circles.items()))


def edge_pixels_near_circle(condition, circle) -> float:
    edges = np.asarray(condition.convert("L")) > 127
    yy, xx = np.mgrid[: edges.shape[0], : edges.shape[1]]
    dist = np.hypot(xx - circle["cx"], yy - circle["cy"])
    return float((np.abs(dist[edges] - circle["r"]) <= 2.5).mean()), int(edges.sum())


def test_canny_dataset_from_images_and_captions(photos, tmp_path):
    folder, circles = photos
    write_captions_jsonl(tmp_path / "captions.jsonl", circles)
    cfg = load_config()
    out = tmp_path / "ds"
    summary = annotate(str(folder), str(out), cfg, kind="canny", captions=str(tmp_path / "captions.jsonl"))
    assert summary["written"] == 3 and summary["skipped"] == []
    assert summary["options"]["low_threshold"] == 0.1 and summary["options"]["high_threshold"] == 0.2

    report = validate(str(out), str(tmp_path / "v"), cfg)  # the output is a valid dataset as is
    assert report["good"] == 3
    rows = {r.id: r for r in load_rows(str(out), cfg, ids=load_validated_ids(tmp_path / "v"))}
    assert set(rows) == {"a", "b", "sub/c"}
    assert (out / "images" / "b.jpg").read_bytes() == (folder / "b.jpg").read_bytes()  # originals kept as is
    for rel, stem in (("a.png", "a"), ("b.jpg", "b"), ("sub/c.png", "sub/c")):
        circle, text = circles[rel]
        row = rows[stem]
        assert row.text == text and row.meta["condition_kind"] == "canny"
        condition = row.load_condition()
        assert condition.size == (RES, RES)
        near, count = edge_pixels_near_circle(condition, circle)
        assert count >= 2 * np.pi * circle["r"] * 0.7  # the outline is found ...
        assert near >= 0.9  # ... and the edges lie on it
    assert json.loads((out / "annotate.json").read_text())["kind"] == "canny"


def test_higher_thresholds_keep_fewer_edges(photos):
    folder, _ = photos
    from PIL import Image

    noisy = np.asarray(Image.open(folder / "a.png")).astype(np.int16)
    noisy = noisy + np.random.default_rng(0).integers(-40, 40, noisy.shape)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    low = np.asarray(CannyAnnotator(0.05, 0.1)(image)) > 0
    high = np.asarray(CannyAnnotator(0.3, 0.6)(image)) > 0
    assert low.sum() > high.sum() > 0


def test_csv_captions_and_sidecar_metadata(photos, tmp_path):
    folder, circles = photos
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text("path,prompt\n" + "".join(f'{rel},"{text}"\n' for rel, (_, text) in circles.items()))
    cfg = load_config(overrides=["data.caption_column=prompt"])
    annotate(str(folder), str(tmp_path / "from_csv"), cfg, captions=str(csv_path))
    rows = load_rows(str(tmp_path / "from_csv"), cfg)
    assert sorted(r.text for r in rows) == sorted(t for _, t in circles.values())

    write_captions_jsonl(folder / "metadata.jsonl", circles)  # imagefolder convention: found beside the images
    annotate(str(folder), str(tmp_path / "from_sidecar"), load_config())
    assert len(load_rows(str(tmp_path / "from_sidecar"), load_config())) == 3


def test_image_without_caption_is_an_error_and_nothing_is_published(photos, tmp_path):
    folder, circles = photos
    circles = dict(circles)
    circles.pop("sub/c.png")
    write_captions_jsonl(tmp_path / "captions.jsonl", circles)
    with pytest.raises(DataError, match=r"1 of 3 images have no caption .*sub/c\.png"):
        annotate(str(folder), str(tmp_path / "out"), load_config(), captions=str(tmp_path / "captions.jsonl"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="no captions"):
        annotate(str(folder), str(tmp_path / "out"), load_config())


def test_unreadable_image_skipped_or_fatal_by_threshold(photos, tmp_path):
    folder, circles = photos
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    write_captions_jsonl(tmp_path / "captions.jsonl", circles)
    caps = str(tmp_path / "captions.jsonl")
    with pytest.raises(DataError, match=r"1 of 3 images could not be read .*b\.jpg"):
        annotate(str(folder), str(tmp_path / "strict"), load_config(), captions=caps)
    assert not (tmp_path / "strict").exists()
    summary = annotate(str(folder), str(tmp_path / "lenient"), load_config(overrides=["data.max_bad_fraction=0.5"]),
                       captions=caps)
    assert summary["written"] == 2 and [s["file"] for s in summary["skipped"]] == ["b.jpg"]
    assert summary["skipped"][0]["error"] == "corrupt_image"


def test_unknown_kind_lists_the_known_kinds(tmp_path, photos, capsys):
    assert "canny" in ANNOTATORS
    with pytest.raises(UsageError, match="unknown annotation kind 'depthx'; known kinds: canny"):
        get_annotator("depthx")
    with pytest.raises(UsageError, match="low < high"):
        get_annotator("canny", low_threshold=0.5, high_threshold=0.2)
    folder, circles = photos
    write_captions_jsonl(tmp_path / "c.jsonl", circles)
    rc = main(["data", "annotate", "--kind", "depthx", "--images", str(folder), "--out", str(tmp_path / "o"),
               "--captions", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "known kinds: canny" in err[0]


def test_cli_annotate_with_thresholds(photos, tmp_path, capsys):
    folder, circles = photos
    write_captions_jsonl(tmp_path / "c.jsonl", circles)
    rc = main(["data", "annotate", "--kind", "canny", "--images", str(folder), "--out", str(tmp_path / "o"),
               "--captions", str(tmp_path / "c.jsonl"), "--low-threshold", "0.2", "--high-threshold", "0.4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["options"]["high_threshold"] == 0.4
    assert (tmp_path / "o" / "config.resolved.yaml").exists()
