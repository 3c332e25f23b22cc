"""Evaluation on a dataset of wide, tall and square rows with aspect-ratio buckets.

Real pieces: the tiny SD1.5 model, a random T2I-Adapter fitted to it, the dataset reader and
validation, the diffusers generators, the Inception network with random weights and a tiny
random CLIP (so the values mean nothing; that every size flows through them is what is tested).
The rows are drawn here with PIL: a disc on a coloured canvas and its outline on black, at
64x64, 128x64 and 64x128."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from t2iops.evaluate.fid import save_random_inception_weights
from t2iops.evaluate.stage import evaluate, evaluate_shard, merge_shards
from t2iops.presets import preset_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BUCKETS = ["64x64", "48x96", "96x48"]  # square, wide (height x width), tall
SHAPES = {"square": (64, 64), "wide": (128, 64), "tall": (64, 128)}  # (width, height) of the rows
PROMPT = "red circle with blue background"


def _draw_rows(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "conditioning_images").mkdir()
    with open(root / "metadata.jsonl", "w") as fh:
        for kind, (w, h) in SHAPES.items():
            for k in range(2):
                name = f"{kind}{k}"
                cx, cy, r = w // 2 + 5 * k, h // 2 - 4 * k, min(w, h) // 4
                box = (cx - r, cy - r, cx + r, cy + r)
                image = Image.new("RGB", (w, h), (30, 60, 200))
                ImageDraw.Draw(image).ellipse(box, fill=(220, 30, 30))
                image.save(root / "images" / f"{name}.png")
                condition = Image.new("RGB", (w, h), (0, 0, 0))
                ImageDraw.Draw(condition).ellipse(box, outline=(255, 255, 255), width=2)
                condition.save(root / "conditioning_images" / f"{name}.png")
                fh.write(json.dumps({"id": name, "image": f"images/{name}.png",
                                     "conditioning_image": f"conditioning_images/{name}.png", "text": PROMPT,
                                     "circle": {"cx": cx, "cy": cy, "r": r}}) + "\n")


def _tiny_clip(folder: Path) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from t2iops.models.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(folder / "tok", [PROMPT], model_max_length=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def _adapter(base: str, folder: Path) -> str:
    from diffusers import T2IAdapter

    from t2iops.models.family import adapter_kwargs_for, vae_scale_factor_of

    unet_config = json.loads((Path(base) / "unet" / "config.json").read_text())
    vae_config = json.loads((Path(base) / "vae" / "config.json").read_text())
    torch.manual_seed(0)
    T2IAdapter(**adapter_kwargs_for(unet_config, "full_adapter", num_res_blocks=1,
                                    vae_scale_factor=vae_scale_factor_of(vae_config))).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def setup(tiny_sd15_path, tmp_path_factory):
    from t2iops.data.validate import validate

    work = tmp_path_factory.mktemp("eval-buckets")
    _draw_rows(work / "data")
    save_random_inception_weights(work / "inception.pth")
    cfg = preset_config("toy", [
        f"model.base_model={tiny_sd15_path}", f"data.root={work / 'data'}",
        "data.val_fraction=0.0", "data.test_fraction=0.0", "evaluate.split=train",
        "encode.resolution=64", f"encode.buckets=[{','.join(BUCKETS)}]",
        "evaluate.num_samples=6", "evaluate.batch_size=4", "evaluate.num_inference_steps=1",
        "evaluate.conditioning_scales=[1.0]", "evaluate.gate.min_circle_iou=null",
        f"evaluate.inception_weights={work / 'inception.pth'}", "evaluate.fid=required",
        "evaluate.kid_subsets=2", "evaluate.kid_subset_size=3", "evaluate.grid_rows=6",
        f"evaluate.clip_model={_tiny_clip(work / 'clip')}", f"storage.cache_dir={work / 'cache'}",
    ])
    validate(str(work / "data"), str(work / "validated"), cfg)
    adapter = _adapter(tiny_sd15_path, work / "adapter")
    metrics = evaluate(adapter, str(work / "data"), str(work / "validated"), str(work / "E"), cfg)
    return work, cfg, adapter, metrics


def test_each_sample_is_generated_and_scored_at_its_bucket(setup):
    work, _, _, metrics = setup
    out = work / "E"
    with open(out / "samples.csv") as fh:
        samples = list(csv.DictReader(fh))
    expected = {"square": "64x64", "wide": "48x96", "tall": "96x48"}
    # square first, then the bucket list's order; id order within a bucket
    assert [s["id"] for s in samples] == ["square0", "square1", "wide0", "wide1", "tall0", "tall1"]
    for s in samples:
        bucket = expected[s["id"][:-1]]
        assert s["bucket"] == bucket
        height, width = (int(v) for v in bucket.split("x"))
        for folder in ("images/without_adapter", "images/adapter@1", "conditions", "real_images"):
            with Image.open(out / folder / s["file"]) as im:
                assert im.size == (width, height), (folder, s["id"])
        # the closed outline's interior is scored: the circle metric ran at every size
        assert 0.0 <= float(s["circle_iou_with_adapter"]) <= 1.0
    for name in ("circle_iou", "edge_f1", "clip_score"):
        assert np.isfinite(metrics[name]["with_adapter"]), name
    assert np.isfinite(metrics["fid"]["with_adapter"]) and np.isfinite(metrics["kid"]["with_adapter"])
    assert "buckets (height x width) | 64x64, 48x96, 96x48" in (out / "report.md").read_text()


def test_the_condition_is_cropped_like_the_real_image(setup):
    """Wide 128x64 rows cover 96x48 at scale 0.75 and lose 0 px; the condition's outline and the
    real image's disc stay where the drawing put them."""
    work = setup[0]
    out = work / "E"
    with open(out / "samples.csv") as fh:
        wide = next(s for s in csv.DictReader(fh) if s["id"] == "wide0")
    condition = np.asarray(Image.open(out / "conditions" / wide["file"])).max(axis=-1) > 127
    real = np.asarray(Image.open(out / "real_images" / wide["file"]))[..., 0] > 127
    ys, xs = np.nonzero(condition)
    ry, rx = np.nonzero(real)
    assert abs(xs.mean() - rx.mean()) < 1.5 and abs(ys.mean() - ry.mean()) < 1.5
    assert abs(rx.mean() - 64 * 0.75) < 2  # the centre of the 128-wide drawing, scaled by 96/128


def test_grid_keeps_the_aspect_of_wide_and_tall_samples(setup):
    from t2iops.evaluate.figures import _paste_fitted

    grid = Image.new("RGB", (128, 128), "white")
    _paste_fitted(grid, Image.new("RGB", (96, 48), "black"), 0, 0, 128)
    dark = np.nonzero(np.asarray(grid)[..., 0] < 128)
    assert (dark[0].min(), dark[0].max(), dark[1].min(), dark[1].max()) == (32, 95, 0, 127)
    with Image.open(setup[0] / "E" / "grid.png") as im:
        assert im.size[1] > 6 * 128  # one row per sample


def test_shards_split_whole_bucket_batches_and_merge_to_the_single_run(setup, tmp_path):
    work, cfg, adapter, metrics = setup
    shards = []
    for i in range(2):
        shards.append(str(tmp_path / f"s{i}"))
        info = evaluate_shard(adapter, str(work / "data"), str(work / "validated"), shards[-1], cfg, (i, 2))
        assert info["buckets"] == [[64, 64], [48, 96], [96, 48]]
    merged = merge_shards(shards, str(tmp_path / "M"), cfg)
    assert merged["circle_iou"] == metrics["circle_iou"] and merged["edge_f1"] == metrics["edge_f1"]
    with open(tmp_path / "M" / "samples.csv") as a, open(work / "E" / "samples.csv") as b:
        for got, want in zip(csv.DictReader(a), csv.DictReader(b)):
            # CLIP's float32 sums vary in the last digits with the thread count (the single run
            # was set up outside the one-thread fixture); everything else is the same bytes.
            assert {k: v for k, v in got.items() if not k.startswith("clip")} == \
                {k: v for k, v in want.items() if not k.startswith("clip")}
            for k in (k for k in got if k.startswith("clip")):
                assert float(got[k]) == pytest.approx(float(want[k]), abs=1e-3)


def test_evaluation_plan_keeps_batches_inside_one_bucket():
    from t2iops.evaluate.plan import evaluation_plan, shard_batches

    plan = evaluation_plan(list("abcdefg"), [(64, 64)], 3)
    assert plan.batches == [(0, 3), (3, 6), (6, 7)]
    assert shard_batches(plan.batches, 3, 1, 2) == [(3, 6), (6, 7)]
