"""Other dataset formats, built locally with `datasets` (no hub): save_to_disk folders, parquet
shards with embedded image bytes, metadata.parquet with paths, and a hub id offline."""
from __future__ import annotations

import io
import json
import pickle

import pytest
from PIL import Image

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.dataset import load_rows, load_validated_ids
from t2iops.data.validate import validate
from t2iops.errors import DataError

datasets = pytest.importorskip("datasets")

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def png(color, size=(24, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def fill50k_like(n: int = 4, broken: int | None = None):
    """A Dataset shaped like fusing/fill50k: image, conditioning_image (Image features), text."""
    images = [{"bytes": b"not an image" if i == broken else png(COLORS[i % 4]), "path": None} for i in range(n)]
    conditions = [{"bytes": png(255, mode="L"), "path": f"cond_{i}.png"} for i in range(n)]
    ds = datasets.Dataset.from_dict(
        {"image": images, "conditioning_image": conditions, "text": [f"circle {i}" for i in range(n)]}
    )
    return ds.cast_column("image", datasets.Image()).cast_column("conditioning_image", datasets.Image())


def test_save_to_disk_dataset_validates_and_loads(tmp_path):
    fill50k_like(4).save_to_disk(str(tmp_path / "saved"))
    cfg = load_config()
    report = validate(str(tmp_path / "saved"), str(tmp_path / "v"), cfg)
    assert report["format"] == "save_to_disk" and report["good"] == 4 and report["bad"] == 0
    ids = load_validated_ids(tmp_path / "v")
    rows = load_rows(str(tmp_path / "saved"), cfg, ids=ids)
    assert [r.id for r in rows] == ["0", "1", "2", "3"]  # no id column: the row index
    for i, row in enumerate(rows):
        assert row.load_image().getpixel((5, 5)) == COLORS[i]
        assert row.load_condition().getpixel((5, 5)) == (255, 255, 255)
        assert row.text == f"circle {i}"
        assert row.meta["conditioning_image"] == f"cond_{i}.png"  # the stored path, not bytes
        assert isinstance(row.meta["image"], str)


def test_save_to_disk_corrupt_bytes_are_quarantined(tmp_path):
    fill50k_like(4, broken=2).save_to_disk(str(tmp_path / "saved"))
    cfg = load_config(overrides=["data.max_bad_fraction=0.5"])
    report = validate(str(tmp_path / "saved"), str(tmp_path / "v"), cfg)
    assert report["errors"] == {"corrupt_image": 1}
    (bad,) = report["bad_rows"]
    assert bad["id"] == "2" and bad["where"] == "data row 2" and "data[2].image" in bad["message"]
    assert sorted(load_validated_ids(tmp_path / "v")) == ["0", "1", "3"]


def test_dataset_dict_save_to_disk(tmp_path):
    datasets.DatasetDict({"train": fill50k_like(3), "validation": fill50k_like(2)}).save_to_disk(str(tmp_path / "dd"))
    rows = load_rows(str(tmp_path / "dd"), load_config())
    assert [r.id for r in rows] == ["train:0", "train:1", "train:2", "validation:0", "validation:1"]
    assert rows[4].load_image().getpixel((0, 0)) == COLORS[1]


def test_parquet_shards_with_encoded_bytes(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    fill50k_like(3).to_parquet(str(root / "train-00000-of-00002.parquet"))
    fill50k_like(4, broken=1).to_parquet(str(root / "train-00001-of-00002.parquet"))
    cfg = load_config(overrides=["data.max_bad_fraction=0.5"])
    report = validate(str(root), str(tmp_path / "v"), cfg)
    assert report["format"] == "parquet" and report["good"] == 6
    assert report["errors"] == {"corrupt_image": 1}
    assert report["bad_rows"][0]["id"] == "train-00001-of-00002.parquet:1"
    rows = load_rows(str(root), cfg, ids=load_validated_ids(tmp_path / "v"))
    assert len(rows) == 6
    assert rows[3].id == "train-00001-of-00002.parquet:0" and rows[3].load_image().getpixel((1, 1)) == COLORS[0]
    # Rows travel to data-loader worker processes by pickle.
    copy = pickle.loads(pickle.dumps(rows[3]))
    assert copy.load_image().tobytes() == rows[3].load_image().tobytes()


def test_metadata_parquet_with_relative_paths_and_id_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pq"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        (root / "img" / f"{i}.png").write_bytes(png(COLORS[i]))
        (root / "img" / f"{i}_c.png").write_bytes(png(0, mode="L"))
    table = pa.table({
        "uid": ["a", "b", "c"],
        "image": ["img/0.png", "img/1.png", "../escape.png"],
        "conditioning_image": ["img/0_c.png", "img/1_c.png", "img/2_c.png"],
        "text": ["one", "two", "three"],
    })
    pq.write_table(table, root / "metadata.parquet")
    cfg = load_config(overrides=["data.id_column=uid", "data.max_bad_fraction=0.5"])
    report = validate(str(root), str(tmp_path / "v"), cfg)
    assert report["errors"] == {"path_escape": 1} and report["bad_rows"][0]["id"] == "c"
    rows = load_rows(str(root), cfg, ids=load_validated_ids(tmp_path / "v"))
    assert [(r.id, r.load_image().getpixel((0, 0))) for r in rows] == [("a", COLORS[0]), ("b", COLORS[1])]


def test_hub_id_offline_names_the_id_and_the_alternatives(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    with pytest.raises(DataError) as info:
        load_rows("hf://fusing/fill50k", load_config())
    message = str(info.value)
    assert "hf://fusing/fill50k" in message and "save_to_disk" in message and "metadata.jsonl" in message
    rc = main(["data", "validate", "--root", "hf://fusing/fill50k", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "fusing/fill50k" in err[0]
    assert not (tmp_path / "v").exists()


def test_jsonl_root_given_as_a_file(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.png").write_bytes(png(COLORS[0]))
    (root / "list.jsonl").write_text(json.dumps({"id": 1, "image": "a.png", "conditioning_image": "a.png",
                                                 "text": "x"}) + "\n")
    (row,) = load_rows(str(root / "list.jsonl"), load_config())
    assert row.id == "1" and row.load_image().size == (24, 24)
