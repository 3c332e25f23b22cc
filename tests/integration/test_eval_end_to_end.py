"""Evaluate an adapter trained for a few steps on the tiny SD1.5 model, end to end.

Real pieces throughout: the synthetic dataset, validation, the latent cache, the trainer, the
diffusers pipelines, the Inception network with a random-weight file in the real
pt_inception layout (so FID/KID values are meaningless here; the path that loads and uses the
weights is what is tested), the CLI, and dvc reading metrics.json.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2iops.evaluate.fid import save_random_inception_weights
from t2iops.evaluate.stage import evaluate, evaluate_shard, merge_shards
from t2iops.presets import preset_config

pytestmark = pytest.mark.slow

NUM_SAMPLES = 4


def _cfg(work: Path, base: str, *extra: str):
    return preset_config("toy", [  # CPU-sized, with cubic timesteps, guidance 5, one scale, no gate
        "train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]",
        "evaluate.gate.min_circle_iou=null",
        f"model.base_model={base}",
        "data.synth.count=48", "data.val_fraction=0.1", "data.test_fraction=0.3",
        "encode.resolution=64", "encode.batch_size=8",
        "train.max_steps=2", "train.batch_size=4", "train.checkpoint_every=1000", "train.lr=1e-3",
        f"evaluate.num_samples={NUM_SAMPLES}", "evaluate.batch_size=2", "evaluate.num_inference_steps=2",
        f"evaluate.inception_weights={work / 'pt_inception_random.pth'}",
        "evaluate.kid_subsets=5", "evaluate.grid_rows=3",
        f"storage.cache_dir={work / 'cache'}",
        *extra,
    ])


@pytest.fixture(scope="module")
def trained(tiny_sd15_path, tmp_path_factory):
    """(work dir, cfg): data, validation and an adapter trained 2 steps by the project's trainer."""
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.train.trainer import train

    work = tmp_path_factory.mktemp("eval")
    save_random_inception_weights(work / "pt_inception_random.pth")
    cfg = _cfg(work, tiny_sd15_path)
    synthesize(str(work / "data"), cfg)
    validate(str(work / "data"), str(work / "validated"), cfg)
    encode_dataset(str(work / "data"), str(work / "validated"), str(work / "cache-latents"), cfg)
    train(str(work / "cache-latents"), str(work / "O"), cfg)
    assert (work / "O" / "adapter" / "diffusion_pytorch_model.safetensors").exists()
    return work, cfg


@pytest.fixture(scope="module")
def single(trained):
    work, cfg = trained
    metrics = evaluate(str(work / "O"), str(work / "data"), str(work / "validated"), str(work / "E"), cfg)
    return work / "E", metrics


def test_single_process_run_writes_every_output(single, trained):
    out, metrics = single
    for name in ("metrics.json", "samples.csv", "grid.png", "report.md", "report.html",
                 "config.resolved.yaml", "_manifest.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["num_samples"] == NUM_SAMPLES
    for name in ("edge_f1", "circle_iou"):
        m = metrics[name]
        assert 0 <= m["with_adapter"] <= 1 and 0 <= m["without_adapter"] <= 1
        assert m["lift"] == pytest.approx(m["with_adapter"] - m["without_adapter"])
    # FID/KID came from the random-weight Inception file (values meaningless, but computed).
    assert np.isfinite(metrics["fid"]["with_adapter"]) and metrics["fid"]["with_adapter"] > 0
    assert np.isfinite(metrics["kid"]["without_adapter"])
    assert metrics["gate"] == {"passed": True, "checks": []}
    # The dataset's own images scored like the generated ones: the ceiling. A rendered disc fills
    # the outline it was drawn from, so its circle IoU is close to 1.
    assert metrics["circle_iou"]["real_images"] > 0.9
    assert metrics["edge_f1"]["real_images"] > metrics["edge_f1"]["without_adapter"]
    assert len(list((out / "real_images").glob("*.png"))) == NUM_SAMPLES

    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert len(rows) == NUM_SAMPLES
    assert [int(r["seed"]) for r in rows] == [1234 + i for i in range(NUM_SAMPLES)]
    mean_iou = np.mean([float(r["circle_iou_with_adapter"]) for r in rows])
    assert mean_iou == pytest.approx(metrics["circle_iou"]["with_adapter"], rel=1e-9)
    real_iou = np.mean([float(r["circle_iou_real_images"]) for r in rows])
    assert real_iou == pytest.approx(metrics["circle_iou"]["real_images"], rel=1e-9)

    for variant in ("without_adapter", "adapter@1"):
        assert len(list((out / "images" / variant).glob("*.png"))) == NUM_SAMPLES
    grid = Image.open(out / "grid.png")
    assert grid.size[1] >= 3 * 128  # three labelled rows
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and 'src="grid.png"' not in html
    md = (out / "report.md").read_text()
    assert "antialias=False" in md and f"N = {NUM_SAMPLES} < 2048" in md and "edge_f1" in md
    assert "| real images | better |" in md and "real images: the dataset's own images" in md
    assert grid.size[0] >= 150 + 4 * 128  # condition, without, with, real image

    # The adapter changes the images; the baseline is a different pipeline, same seeds.
    a = np.asarray(Image.open(next((out / "images" / "adapter@1").glob("000000_*.png"))))
    b = np.asarray(Image.open(next((out / "images" / "without_adapter").glob("000000_*.png"))))
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)


@pytest.fixture(scope="module")
def two_shards(trained):
    work, cfg = trained
    shards = [str(work / f"S{i}") for i in range(2)]
    for i, s in enumerate(shards):
        evaluate_shard(str(work / "O"), str(work / "data"), str(work / "validated"), s, cfg, (i, 2))
    return shards


def test_two_shards_merged_equal_one_process(single, trained, two_shards):
    work, cfg = trained
    out, metrics = single
    shards = list(two_shards)
    assert json.loads((work / "S0" / "shard.json").read_text())["range"] == [0, 2]
    merged = merge_shards(list(reversed(shards)), str(work / "E2"), cfg)  # order does not matter

    # Same images, byte for byte.
    for variant in ("without_adapter", "adapter@1"):
        for p in sorted((out / "images" / variant).glob("*.png")):
            assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(work / "E2" / "images" / variant / p.name)))
    # Per-sample metrics identical; FID from merged float64 sums equal to ~1e-10.
    for name in ("edge_f1", "circle_iou"):
        assert merged[name] == metrics[name]
    for key in ("with_adapter", "without_adapter"):
        assert merged["fid"][key] == pytest.approx(metrics["fid"][key], rel=1e-10, abs=1e-10)
        assert merged["kid"][key] == pytest.approx(metrics["kid"][key], rel=1e-10, abs=1e-12)
    assert open(work / "E2" / "samples.csv").read() == open(out / "samples.csv").read()

    # Shards from other settings are refused; an incomplete set too.
    with pytest.raises(Exception, match="shard"):
        merge_shards(shards[:1], str(work / "E3"), cfg)


def test_gate_via_cli_exits_3_below_threshold_and_0_above(single, trained, two_shards):  # reads S0, S1
    work, cfg = trained
    out, metrics = single
    iou = metrics["circle_iou"]["with_adapter"]
    base = [sys.executable, "-m", "t2iops.cli", "evaluate", "merge", "--shards", str(work / "S0"), str(work / "S1")]
    params = work / "params.yaml"
    params.write_text(cfg.to_yaml())
    common = ["--params", str(params)]

    failed = subprocess.run(base + ["--out", str(work / "G1"), "--gate", *common,
                                    "-S", f"evaluate.gate.min_circle_iou={min(iou + 0.01, 1.0)}"],
                            capture_output=True, text=True)
    assert failed.returncode == 3, failed.stderr
    assert "gate failed" in failed.stderr and "circle_iou" in failed.stderr
    written = json.loads((work / "G1" / "metrics.json").read_text())  # published before failing
    assert written["gate"]["passed"] is False and written["gate"]["checks"][0]["name"] == "circle_iou"

    passed = subprocess.run(base + ["--out", str(work / "G2"), "--gate", *common,
                                    "-S", f"evaluate.gate.min_circle_iou={max(iou - 0.01, 0.0)}"],
                            capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["gate"]["passed"] is True


def test_metrics_json_is_a_dvc_metric(single, tmp_path):
    out, metrics = single
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(a, cwd=repo, capture_output=True, text=True, check=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(dvc, "init", "-q")
    shutil.copy(out / "metrics.json", repo / "metrics.json")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    changed = dict(metrics, circle_iou={**metrics["circle_iou"], "with_adapter": metrics["circle_iou"]["with_adapter"] + 0.5})
    (repo / "metrics.json").write_text(json.dumps(changed))
    diff = json.loads(run(dvc, "metrics", "diff", "--json", "--targets", "metrics.json").stdout)
    changes = diff["metrics.json"]
    assert changes["circle_iou.with_adapter"]["diff"] == pytest.approx(0.5)
    assert "edge_f1.lift" not in changes  # unchanged metrics are not listed


@pytest.mark.s3
def test_shards_and_weights_on_s3_merge_to_s3(single, trained, two_shards, s3_bucket):  # uploads S0, S1
    """Shards and Inception weights as s3:// URIs on the loopback server; the merge is published
    to s3:// with its manifest last, and matches the local single-process metrics."""
    from t2iops import storage
    from t2iops.config import config_from_dict
    from t2iops.evaluate.fid import resolve_inception_weights

    work, cfg = trained
    out, metrics = single
    endpoint, bucket = s3_bucket
    s3_cfg = config_from_dict({**cfg.to_dict(), "storage": {"endpoint_url": endpoint, "cache_dir": str(work / "s3-cache")}})
    for i in range(2):
        storage.upload_dir(work / f"S{i}", f"s3://{bucket}/shards/S{i}", s3_cfg)
    storage.write_bytes(f"s3://{bucket}/weights/pt_inception_random.pth",
                        (work / "pt_inception_random.pth").read_bytes(), s3_cfg)

    local = resolve_inception_weights(f"s3://{bucket}/weights/pt_inception_random.pth", s3_cfg)
    assert local.read_bytes() == (work / "pt_inception_random.pth").read_bytes()

    merged = merge_shards([f"s3://{bucket}/shards/S0", f"s3://{bucket}/shards/S1"], f"s3://{bucket}/E", s3_cfg)
    assert storage.is_published(f"s3://{bucket}/E", s3_cfg)
    remote = json.loads(storage.read_text(f"s3://{bucket}/E/metrics.json", s3_cfg))
    assert remote == merged
    assert remote["circle_iou"] == metrics["circle_iou"]
    assert remote["fid"]["with_adapter"] == pytest.approx(metrics["fid"]["with_adapter"], rel=1e-10)
    assert "report.html" in storage.list_files(f"s3://{bucket}/E", s3_cfg)


def test_the_merge_step_logs_kfp_v2_metrics_under_kfp_local(single, trained, two_shards):
    """The real merge component under kfp.local: its Metrics artifact (system.Metrics, what the
    KFP v2 UI shows) holds fidelity with/without the adapter, the lift and the gate."""
    from kfp import local

    from t2iops._project.components import build_components
    from t2iops.pipelines.runtime import config_param

    work, cfg = trained
    _, metrics = single
    merge_evaluation = build_components("python:3.11").merge_evaluation  # the subprocess runner ignores it

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp-root"),
               raise_on_error=True)
    task = merge_evaluation(shard_uris=list(two_shards), config=config_param(cfg, "evaluate"))
    logged = task.outputs["metrics"].metadata
    assert task.outputs["metrics"].schema_title == "system.Metrics"
    for name in ("edge_f1", "circle_iou"):
        for variant in ("with_adapter", "without_adapter", "lift"):
            assert logged[f"{name}_{variant}"] == pytest.approx(metrics[name][variant])
    assert logged["gate_passed"] == float(metrics["gate"]["passed"]) and logged["num_samples"] == NUM_SAMPLES
    assert task.outputs["Output"] is bool(metrics["gate"]["passed"])
