"""`evaluate` names its image files safely and uniquely from any row id.

Real pieces: the synthetic dataset, `data validate`, a T2I-Adapter built for the tiny SD1.5
model by the project's own factory (its weights do not matter here: ids do), and the real
`evaluate` (sampling, scoring, merge, report). Before the fix, a dataset without an id column
(ids are image paths) crashed with `No such file ... images/without_adapter/000000_images/...`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from t2iops.evaluate.plan import sample_file_name
from t2iops.evaluate.stage import evaluate
from t2iops.presets import preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE_IDS = [
    "images/000001.png",  # an image path, as when the dataset has no id column
    "a/b", "a_b", "a b", "a?b",  # four ids that sanitize to the same stem
    "../../escape", "..", "/etc/passwd", "C:\\Windows\\x", "ünï/cødé", "x" * 300,
]


@pytest.fixture(scope="module")
def adapter(tiny_sd15_path, tmp_path_factory):
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model

    cfg = preset_config("toy", [f"model.base_model={tiny_sd15_path}"])
    folder = tmp_path_factory.mktemp("adapter")
    build_adapter(load_base_model(cfg.model, cfg.storage), cfg.model).save_pretrained(folder)
    return folder


def _cfg(tmp: Path, base: str, count: int, *extra: str):
    return preset_config("toy", [  # CPU-sized, with guidance 5, one scale, no gate
        "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]", "evaluate.gate.min_circle_iou=null",
        f"model.base_model={base}", f"data.synth.count={count}", "data.synth.resolution=64",
        "data.val_fraction=0", "data.test_fraction=0", "evaluate.split=train",
        f"evaluate.num_samples={count}", f"evaluate.batch_size={count}", "evaluate.num_inference_steps=1",
        "evaluate.fid=off", f"evaluate.grid_rows={count}", f"storage.cache_dir={tmp / 'cache'}", *extra,
    ])


def _dataset(root: Path, cfg, ids: list[str] | None) -> None:
    """The synthetic dataset with its ``id`` key removed (ids become image paths), or set to ``ids``."""
    from t2iops.data.synth import synthesize

    synthesize(str(root), cfg)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    for k, row in enumerate(rows):
        if ids is None:
            del row["id"]
        else:
            row[cfg.data.id_column] = ids[k]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _assert_safe_outputs(out: Path, expected_ids: list[str]) -> None:
    samples = list(csv.DictReader(open(out / "samples.csv", encoding="utf-8")))
    assert sorted(s["id"] for s in samples) == sorted(expected_ids)  # ids kept verbatim in the table
    names = [s["file"] for s in samples]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 68, name
        for folder in ("images/without_adapter", "images/adapter@1", "conditions", "real_images"):
            assert (out / folder / name).is_file(), (folder, name)
    written = [p for p in out.rglob("*.png")]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert len(list((out / "images" / "adapter@1").iterdir())) == len(expected_ids)  # nothing nested


def test_dataset_without_id_column_uses_image_paths(adapter, tiny_sd15_path, tmp_path):
    from t2iops.data.validate import validate

    cfg = _cfg(tmp_path, tiny_sd15_path, 2)
    _dataset(tmp_path / "data", cfg, None)
    validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
    metrics = evaluate(str(adapter), str(tmp_path / "data"), str(tmp_path / "validated"), str(tmp_path / "E"), cfg)
    assert metrics["num_samples"] == 2
    _assert_safe_outputs(tmp_path / "E", ["images/000000.png", "images/000001.png"])


def test_hostile_ids_give_safe_unique_names(adapter, tiny_sd15_path, tmp_path):
    from t2iops.data.validate import validate

    count = len(HOSTILE_IDS)
    cfg = _cfg(tmp_path, tiny_sd15_path, count, "data.id_column=key", "data.synth.resolution=32",
               "evaluate.resolution=32")
    _dataset(tmp_path / "data", cfg, HOSTILE_IDS)
    validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
    evaluate(str(adapter), str(tmp_path / "data"), str(tmp_path / "validated"), str(tmp_path / "E"), cfg)
    _assert_safe_outputs(tmp_path / "E", HOSTILE_IDS)
    assert (tmp_path / "E" / "grid.png").is_file()


def test_names_for_ids_that_sanitize_alike_differ_even_at_one_index():
    a, b = sample_file_name(3, "a/b"), sample_file_name(3, "a_b")
    assert a != b and a.startswith("000003_a_b_") and b.startswith("000003_a_b_")
    assert sample_file_name(0, "..") == f"000000_id_{sample_file_name(0, '..')[-12:-4]}.png"
    assert len(sample_file_name(999_999, "y" * 10_000)) == 68
