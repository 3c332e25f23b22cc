"""The dataset contract: splits by id hash, load_rows, ids, column names, validated ids."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from t2iops.config import load_config
from t2iops.data.dataset import load_rows, load_validated_ids, split_of
from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.errors import DataError


def test_split_of_is_deterministic_and_follows_fractions():
    ids = [f"{i:06d}" for i in range(20000)]
    splits = [split_of(i, 0.05, 0.10) for i in ids]
    assert splits == [split_of(i, 0.05, 0.10) for i in ids]
    counts = Counter(splits)
    assert abs(counts["val"] / len(ids) - 0.05) < 0.01
    assert abs(counts["test"] / len(ids) - 0.10) < 0.01
    assert split_of("x", 0.0, 0.0) == "train"
    # Growing the validation share only moves rows from train into val.
    moved = [(a, split_of(i, 0.10, 0.10)) for i, a in zip(ids, splits) if a != split_of(i, 0.10, 0.10)]
    assert moved and all(a == "train" and b == "val" for a, b in moved)


def test_adding_rows_does_not_reshuffle_old_ones(tmp_path):
    """Validate a dataset, grow it (same seed, more samples), validate again: old rows keep
    their splits and their content."""
    small = load_config(overrides=["data.synth.count=40", "data.synth.resolution=16",
                                   "data.val_fraction=0.2", "data.test_fraction=0.2"])
    large = load_config(overrides=["data.synth.count=80", "data.synth.resolution=16",
                                   "data.val_fraction=0.2", "data.test_fraction=0.2"])
    synthesize(str(tmp_path / "d"), small)
    validate(str(tmp_path / "d"), str(tmp_path / "v1"), small)
    before = load_validated_ids(tmp_path / "v1")
    synthesize(str(tmp_path / "d"), large)  # republished in place with 40 more rows
    validate(str(tmp_path / "d"), str(tmp_path / "v2"), large)
    after = load_validated_ids(tmp_path / "v2")
    assert len(before) == 40 and len(after) == 80
    assert {i: after[i] for i in before} == before
    assert len(set(before.values())) == 3  # the test is not vacuous: all three splits occur


def test_load_rows_split_filter_and_row_contents(tmp_path):
    cfg = load_config(overrides=["data.synth.count=30", "data.synth.resolution=16",
                                 "data.val_fraction=0.3", "data.test_fraction=0.3"])
    synthesize(str(tmp_path / "d"), cfg)
    all_rows = load_rows(str(tmp_path / "d"), cfg)
    by_split = {s: load_rows(str(tmp_path / "d"), cfg, split=s) for s in ("train", "val", "test")}
    assert sorted(r.id for rows in by_split.values() for r in rows) == sorted(r.id for r in all_rows)
    for split, rows in by_split.items():
        assert rows and all(r.split == split == split_of(r.id, 0.3, 0.3) for r in rows)
    row = all_rows[0]
    assert row.meta["image"] == "images/000000.png" and "circle" in row.meta
    assert row.load_image().mode == "RGB" and row.load_condition().mode == "RGB"
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_rows(str(tmp_path / "d"), cfg, split="valid")


def test_validated_mapping_overrides_splits_and_missing_ids_are_an_error(tmp_path):
    cfg = load_config(overrides=["data.synth.count=6", "data.synth.resolution=16"])
    synthesize(str(tmp_path / "d"), cfg)
    ids = {"000001": "test", "000004": "val"}
    rows = load_rows(str(tmp_path / "d"), cfg, ids=ids)
    assert {r.id: r.split for r in rows} == ids
    assert [r.id for r in load_rows(str(tmp_path / "d"), cfg, split="val", ids=ids)] == ["000004"]
    assert [r.id for r in load_rows(str(tmp_path / "d"), cfg, ids={"000002"})] == ["000002"]
    with pytest.raises(DataError, match="not in the dataset .*changed since validation"):
        load_rows(str(tmp_path / "d"), cfg, ids={"000001", "999999"})


def test_id_defaults_to_image_path_without_id_key(tmp_path):
    root = tmp_path / "plain"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(root / "img" / f"{i}.png")
        Image.new("RGB", (20, 20), 0).save(root / "img" / f"{i}_c.png")
        rows.append({"image": f"img/{i}.png", "conditioning_image": f"img/{i}_c.png", "text": f"sample {i}"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # blank lines are fine
    cfg = load_config()
    loaded = load_rows(str(root), cfg)
    assert [r.id for r in loaded] == ["img/0.png", "img/1.png", "img/2.png"]
    assert loaded[1].load_image().getpixel((0, 0)) == (50, 0, 0)

    missing = load_config(overrides=["data.id_column=uid"])
    with pytest.raises(DataError, match="id column 'uid' is missing"):
        load_rows(str(root), missing)


def test_fill50k_style_columns_with_other_names(tmp_path):
    """Rows shaped like another dataset: different column names, set through the config only."""
    root = tmp_path / "other"
    root.mkdir()
    Image.new("RGB", (24, 24), (10, 200, 10)).save(root / "a.png")
    Image.new("L", (24, 24), 255).save(root / "a_edge.png")
    row = {"name": "sample-a", "target": "a.png", "source": "a_edge.png", "prompt": "green square"}
    (root / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    cfg = load_config(overrides=["data.id_column=name", "data.image_column=target",
                                 "data.conditioning_image_column=source", "data.caption_column=prompt"])
    report = validate(str(root), str(tmp_path / "v"), cfg)
    assert report["good"] == 1
    (loaded,) = load_rows(str(root), cfg, ids=load_validated_ids(tmp_path / "v"))
    assert loaded.id == "sample-a" and loaded.text == "green square"
    assert loaded.load_condition().getpixel((3, 3)) == (255, 255, 255)


def test_load_validated_ids_refuses_unpublished_output(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "rows.jsonl").write_text('{"id": "1", "split": "train"}\n')
    with pytest.raises(DataError, match="_manifest.json.*t2iops data validate"):
        load_validated_ids(tmp_path / "v")


def test_root_that_holds_no_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds none of: metadata.jsonl"):
        load_rows(str(tmp_path / "empty"), load_config())
