"""The adapter learns circles at every aspect: a toy base trained here (a short run of the real
``t2iops toy-base`` recipe), then synthetic wide, tall and square circles synthesised, validated,
encoded into three buckets, an adapter trained on them and ``evaluate`` run on the test split.
Per bucket, the circle IoU of the images generated with the adapter must be above the IoU of
those generated without it: the adapter places the disc where the outline is at each aspect.

The base is far from the full toy base (200 VAE and 300 UNet steps: its colour check scores 0,
against 1.0 at 1,200 and 1,000); it draws a blob of some colour somewhere, which the adapter
learns to move and size. The toy base trains on square images only, so the wide and tall
buckets are sizes the base never saw. About three minutes on one core. The toy base trains on
one thread: beside the other test worker on two cores, two threads spent most of their time
waiting on each other (122 s alone, 316 to 382 s in whole-suite runs)."""
from __future__ import annotations

import csv
import time
from collections import defaultdict

import pytest

from t2iops.presets import preset_config

pytestmark = pytest.mark.slow

BUCKETS = ["64x64", "48x96", "96x48"]  # square, wide (height x width), tall
TOY_BASE = ["toy_base.vae_steps=200", "toy_base.unet_steps=300", "toy_base.batch_size=16",
            "toy_base.num_samples=1000", "toy_base.warmup_steps=20", "toy_base.num_threads=1",
            "toy_base.eval_samples=2", "toy_base.eval_steps=2"]
CIRCLES = ["data.synth.aspect_ratios=[1.0,2.0,0.5]", "data.synth.count=240", "data.val_fraction=0.0",
           "data.test_fraction=0.1", f"encode.buckets=[{','.join(BUCKETS)}]", "encode.splits=[train]",
           "encode.batch_size=16"]
ADAPTER = ["train.max_steps=150", "train.batch_size=8", "train.checkpoint_every=10000", "train.log_every=50",
           "evaluate.num_samples=24", "evaluate.batch_size=8", "evaluate.num_inference_steps=10",
           "evaluate.conditioning_scales=[1.0]", "evaluate.fid=off", "evaluate.gate.min_circle_iou=0.0"]


def per_bucket(samples_csv) -> dict[str, dict[str, float]]:
    """Mean circle IoU without and with the adapter, and the sample count, of each bucket."""
    values = defaultdict(lambda: defaultdict(list))
    with open(samples_csv) as fh:
        for row in csv.DictReader(fh):
            for variant in ("without_adapter", "with_adapter"):
                values[row["bucket"]][variant].append(float(row[f"circle_iou_{variant}"]))
    return {bucket: {"n": len(v["with_adapter"]), **{k: sum(x) / len(x) for k, x in v.items()}}
            for bucket, v in values.items()}


def test_the_adapter_learns_circles_in_every_bucket(tmp_path):
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.evaluate.stage import evaluate
    from t2iops.models.toy_base import train_toy_base
    from t2iops.train.trainer import train

    start = time.perf_counter()
    base = tmp_path / "toy-base"
    cfg = preset_config("toy", [f"model.base_model={base}", f"storage.cache_dir={tmp_path / 'hf'}",
                                *TOY_BASE, *CIRCLES, *ADAPTER])
    train_toy_base(str(base), cfg)
    data, validated, cache = (str(tmp_path / k) for k in ("data", "validated", "cache"))
    synthesize(data, cfg)
    validate(data, str(validated), cfg)
    encode_dataset(data, validated, cache, cfg)
    train(cache, str(tmp_path / "run"), cfg)
    evaluate(str(tmp_path / "run"), data, validated, str(tmp_path / "eval"), cfg)

    table = per_bucket(tmp_path / "eval" / "samples.csv")
    print(f"\ncircle IoU per bucket ({time.perf_counter() - start:.0f} s)\nbucket    n  without  with")
    for bucket in BUCKETS:
        row = table[bucket]
        print(f"{bucket:7s} {row['n']:3d}  {row['without_adapter']:.3f}    {row['with_adapter']:.3f}")
    assert sorted(table) == sorted(BUCKETS)
    for bucket in BUCKETS:
        assert table[bucket]["with_adapter"] > table[bucket]["without_adapter"], (bucket, table)
