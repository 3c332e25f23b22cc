"""End-to-end training on tiny SD1.5 / SDXL models: outputs, exact resume, learning, guards,
EMA, pretrained starts, S3 outputs. Each run is a few steps at 64 px."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2iops import storage
from t2iops.config import load_config
from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.encode import encode_dataset
from t2iops.presets import preset_config, preset_path
from t2iops.train import train

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def base_overrides(model):
    return [f"model.base_model={model}", "data.synth.count=24", "data.val_fraction=0.2", "data.test_fraction=0.0",
            "encode.resolution=64", "encode.shard_size=8", "encode.batch_size=8", "train.batch_size=2",
            "train.log_every=1", "train.num_workers=0",
            "train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0"]  # over the toy preset


def make_cache(root: Path, model: str, *extra) -> str:
    cfg = preset_config("toy", base_overrides(model) + list(extra))
    synthesize(str(root / "data"), cfg)
    validate(str(root / "data"), str(root / "validated"), cfg)
    encode_dataset(str(root / "data"), str(root / "validated"), str(root / "cache"), cfg)
    return str(root / "cache")


@pytest.fixture(scope="module")
def sdxl_cache(tmp_path_factory, tiny_sdxl_path):
    return make_cache(tmp_path_factory.mktemp("sdxl"), tiny_sdxl_path, "encode.random_flip=true")


@pytest.fixture(scope="module")
def sd15_cache(tmp_path_factory, tiny_sd15_path):
    return make_cache(tmp_path_factory.mktemp("sd15"), tiny_sd15_path)


def cfg_for(model, *extra):
    return preset_config("toy", base_overrides(model) + list(extra))


def adapter_weights(folder) -> dict:
    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def assert_bit_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, adapter_type, precision, workers", [
    ("sd15", "full_adapter", "no", 0), ("sd15", "light_adapter", "no", 0), ("sdxl", "full_adapter_xl", "bf16", 1)])
def test_training_writes_a_loadable_adapter_and_a_summary(request, tmp_path, caplog, family, adapter_type, precision,
                                                         workers):
    from diffusers import T2IAdapter

    model = request.getfixturevalue(f"tiny_{family}_path")
    cache = request.getfixturevalue(f"{family}_cache")
    out = tmp_path / "run"
    cfg = cfg_for(model, f"model.adapter_type={adapter_type}", "train.max_steps=3", "train.checkpoint_every=2",
                  "train.keep_last=1", "train.caption_dropout=0.2", "train.validate_every=3",
                  "train.validation_samples=2", "train.validation_inference_steps=2",
                  f"train.mixed_precision={precision}", f"train.num_workers={workers}")
    with caplog.at_level("INFO", logger="t2iops.train"):
        train(cache, str(out), cfg)

    adapter = T2IAdapter.from_pretrained(out, subfolder="adapter")
    assert adapter.config.adapter_type == adapter_type
    ckpt = T2IAdapter.from_pretrained(out / "checkpoints" / "step-000003", subfolder="adapter")
    assert_bit_equal(adapter.state_dict(), ckpt.state_dict())
    assert (out / "checkpoints" / "latest").read_text() == "step-000003"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000003"]  # keep_last=1

    manifest = storage.read_manifest(str(out))
    assert {"adapter/config.json", "adapter/diffusion_pytorch_model.safetensors", "summary.json",
            "config.resolved.yaml"} <= set(manifest["files"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and len(summary["losses"]) == 3 and summary["skipped_steps"] == 0
    assert summary["samples_per_s"] > 0 and summary["peak_memory"]["bytes"] > 0
    assert summary["family"] == family and summary["data_version"] and summary["base_model"]["path"] == model
    # The run records the reference it loaded: the one the cache was encoded with.
    assert summary["base_model"] == json.loads((Path(cache) / "cache.json").read_text())["base_model"]
    assert summary["base_model"]["dtype"] == "fp32" and summary["base_model"]["config_hash"]
    assert summary["mixed_precision"] == precision and all(x is not None for x in summary["losses"])
    assert [v["step"] for v in summary["validation"]] == [0, 3]
    # One square bucket (the toy preset's): its samples, and the 3 steps' 6 samples all from it.
    n = len(json.loads((Path(cache) / "cache.json").read_text())["samples"]["train"]["ids"])
    assert summary["buckets"] == [{"bucket": "64x64", "height": 64, "width": 64, "samples": n,
                                   "micro_batches_per_epoch": n // 2, "left_out_per_epoch": n % 2, "samples_seen": 6}]
    assert f"bucket 64x64: {n} samples, {n // 2} micro-batches per epoch ({n % 2} left out of each epoch), 3 of 3 " \
           "optimizer steps" in caplog.messages
    assert {"val_loss", "edge_f1"} <= set(summary["validation"][-1])
    assert (out / "validation" / "step-000003.png").exists()
    assert load_config(out / "config.resolved.yaml").model.adapter_type == adapter_type
    # Logs for TensorBoard and DVCLive (dvc plots reads the tsv files).
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "logs" / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    from t2iops.pipelines.kfp_metrics import training_metrics

    assert {"final_loss", "samples_per_s", "val_loss", "val_edge_f1"} <= set(training_metrics(summary))


@pytest.mark.slow
def test_resume_after_a_kill_is_bit_equal_to_an_uninterrupted_run(tmp_path, tiny_sdxl_path, sdxl_cache):
    """Kill a run (SIGKILL) after its first checkpoint, resume it, compare with a run that was
    never interrupted: same adapter weights, EMA and loss history, bit for bit."""
    overrides = ["train.max_steps=8", "train.checkpoint_every=2", "train.grad_accum=2", "train.ema_decay=0.9",
                 "train.caption_dropout=0.3", "train.lr_schedule=cosine", "train.warmup_steps=2",
                 "train.snr_gamma=5", "train.lr=1e-3"]
    cfg = cfg_for(tiny_sdxl_path, *overrides)
    train(sdxl_cache, str(tmp_path / "straight"), cfg)

    out = tmp_path / "interrupted"
    killed_at, _ = train_killed_after_a_checkpoint(sdxl_cache, out, tiny_sdxl_path, overrides)
    assert killed_at < "step-000008", "the run finished before it could be interrupted"
    assert not (out / "adapter").exists()

    train(sdxl_cache, str(out), cfg, resume="latest")
    assert_resumed_as_straight(tmp_path / "straight", out, killed_at)


@pytest.mark.slow
def test_the_adapter_learns(tmp_path, tiny_sd15_path, sd15_cache):
    """Val loss (fixed batch, fixed noise and timesteps) falls clearly within a short run. The
    signal is strong on purpose: with v-prediction and cubic timesteps the target is mostly the
    clean latent, whose layout the condition gives away; the frozen UNet is random."""
    cfg = cfg_for(tiny_sd15_path, "train.max_steps=50", "train.batch_size=4", "train.lr=3e-3",
                  "train.prediction_type=v_prediction", "train.validate_every=50", "train.validation_samples=4",
                  "train.validation_inference_steps=1", "train.checkpoint_every=50")
    train(sd15_cache, str(tmp_path / "run"), cfg)
    val = json.loads((tmp_path / "run" / "summary.json").read_text())["validation"]
    before, after = val[0]["val_loss"], val[-1]["val_loss"]
    assert after < 0.7 * before, (before, after)


def _poison(cache: Path, fraction_rows=None):
    """Replace cached latents with NaN (all rows, or the given rows of shard 0)."""
    for shard in (cache / "latents").rglob("shard-*.safetensors"):
        tensors = load_file(str(shard))
        for name in [k for k in tensors if k.startswith("latent_")]:
            if fraction_rows is None:
                tensors[name][:] = float("nan")
            elif shard.name == "shard-00000.safetensors":
                tensors[name][fraction_rows] = float("nan")
        save_file(tensors, str(shard))


def test_non_finite_losses_skip_steps_and_abort_keeping_the_last_checkpoint(tmp_path, tiny_sd15_path, sd15_cache):
    from t2iops.train.trainer import TrainingAborted

    cache = tmp_path / "cache"
    shutil.copytree(sd15_cache, cache)
    _poison(cache, fraction_rows=[0])  # one bad sample
    out = tmp_path / "run"
    cfg = cfg_for(tiny_sd15_path, "train.max_steps=10", "train.checkpoint_every=5", "train.batch_size=6")
    train(str(cache), str(out), cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] >= 1 and summary["steps"] == 10
    assert summary["skipped_steps"] == summary["losses"].count(None)
    assert all(torch.isfinite(v).all() for v in adapter_weights(out / "adapter").values())

    _poison(cache)  # now every sample: three bad steps in a row abort
    cfg = cfg_for(tiny_sd15_path, "train.max_steps=20", "train.checkpoint_every=5", "train.batch_size=6",
                  "train.max_bad_steps=3")
    with pytest.raises(TrainingAborted, match="3 consecutive steps had a non-finite loss"):
        train(str(cache), str(out), cfg, resume="latest")
    assert (out / "checkpoints" / "latest").read_text() == "step-000010"
    assert storage.is_published(str(out / "checkpoints" / "step-000010"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000005", "step-000010"]


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, tiny_sdxl_path, sdxl_cache):
    runs = {}
    for flag in (False, True):
        out = tmp_path / f"gc-{flag}"
        train(sdxl_cache, str(out), cfg_for(tiny_sdxl_path, "train.max_steps=2", "train.lr=1e-3",
                                            f"train.gradient_checkpointing={str(flag).lower()}"))
        runs[flag] = (json.loads((out / "summary.json").read_text())["losses"], adapter_weights(out / "adapter"))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, atol=1e-6, rtol=1e-5)


def test_ema_weights_are_exported(tmp_path, tiny_sd15_path, sd15_cache):
    out = tmp_path / "run"
    train(sd15_cache, str(out), cfg_for(tiny_sd15_path, "train.max_steps=3", "train.ema_decay=0.5",
                                        "train.checkpoint_every=3", "train.lr=1e-2"))
    shipped = adapter_weights(out / "adapter")
    state = out / "checkpoints" / "step-000003" / "state"
    ema = load_file(str(state / "ema.safetensors"))
    raw = load_file(str(state / "adapter.safetensors"))
    for k, v in ema.items():
        assert torch.equal(shipped[k], v)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_pretrained_adapter_start_and_fit_check(tmp_path, tiny_sd15_path, tiny_sdxl_path, sd15_cache, sdxl_cache):
    from t2iops.errors import ModelError

    first = tmp_path / "first"
    train(sd15_cache, str(first), cfg_for(tiny_sd15_path, "train.max_steps=2", "train.lr=1e-2"))
    # A second run started from those weights with a negligible learning rate ends where it began,
    # not at a fresh initialisation (which the first run's large steps moved away from).
    second = tmp_path / "second"
    train(sd15_cache, str(second), cfg_for(tiny_sd15_path, "train.max_steps=1", "train.lr=1e-12",
                                           f"model.pretrained_adapter={first}"))
    fresh = tmp_path / "fresh"
    train(sd15_cache, str(fresh), cfg_for(tiny_sd15_path, "train.max_steps=1", "train.lr=1e-12"))
    a, b, c = (adapter_weights(d / "adapter") for d in (first, second, fresh))
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)
    # An SD1.5 adapter does not fit the SDXL UNet: refused with both shape lists.
    with pytest.raises(ModelError, match="does not fit"):
        train(sdxl_cache, str(tmp_path / "bad"), cfg_for(tiny_sdxl_path, "train.max_steps=1",
                                                          f"model.pretrained_adapter={first}"))


def test_a_fresh_run_refuses_an_output_holding_another_runs_checkpoints(tmp_path, tiny_sd15_path, sd15_cache):
    from t2iops.errors import UsageError

    out = tmp_path / "run"
    cfg = cfg_for(tiny_sd15_path, "train.max_steps=1")
    train(sd15_cache, str(out), cfg)
    with pytest.raises(UsageError, match="--resume latest"):
        train(sd15_cache, str(out), cfg)
    assert storage.is_published(str(out))  # the finished run is untouched


def test_a_base_model_setting_that_disagrees_with_the_cache_is_refused(tmp_path, tiny_sd15_path, tiny_sdxl_path,
                                                                       sd15_cache):
    from t2iops.errors import ModelError

    # The cache names its base model; a model.base_model naming another one is refused, with both.
    with pytest.raises(ModelError, match=f"model.base_model='{tiny_sdxl_path}' but cache .* path '{tiny_sd15_path}'"):
        train(sd15_cache, str(tmp_path / "run"), cfg_for(tiny_sdxl_path, "train.max_steps=1"))
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.s3
def test_training_to_s3_and_resuming_from_s3(s3_bucket, tmp_path, tiny_sd15_path, sd15_cache, monkeypatch):
    endpoint, bucket = s3_bucket
    out = f"s3://{bucket}/runs/one"
    scratch = tmp_path / "tmp"  # the process's temporary folder: logs and staging go here, then away
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = cfg_for(tiny_sd15_path, f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                  "train.max_steps=2", "train.checkpoint_every=1")
    train(sd15_cache, out, cfg)
    files = storage.list_files(out, cfg)
    assert {"adapter/config.json", "summary.json", "_manifest.json", "checkpoints/latest"} <= set(files)
    assert any(f.startswith("logs/tensorboard/") for f in files)
    assert "logs/dvclive/metrics.json" in files  # written by the logger's close, after the last sync
    assert sorted(p.name for p in scratch.iterdir()) == []
    cfg4 = cfg_for(tiny_sd15_path, f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                   "train.max_steps=4", "train.checkpoint_every=1")
    train(sd15_cache, out, cfg4, resume="latest")
    summary = json.loads(storage.read_text(storage.join(out, "summary.json"), cfg))
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("step-000002")
    assert storage.read_text(storage.join(out, "checkpoints/latest"), cfg) == "step-000004"
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_cli_refuses_fp16_on_cpu_before_loading_anything(tmp_path, capsys, sd15_cache):
    from t2iops.cli import main

    rc = main(["train", "--cache", sd15_cache, "--out", str(tmp_path / "run"), "--params", str(REPO / "params.yaml"),
               "-S", "train.mixed_precision=fp16"])
    assert rc == 2
    assert "train.mixed_precision=fp16" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_streamed_s3_cache_trains_and_resumes_bit_equal_to_the_local_cache(s3_bucket, tmp_path, tiny_sd15_path,
                                                                             sd15_cache):
    """The cache on S3, streamed shard by shard under a disk budget smaller than one shard,
    interrupted after 3 steps and resumed: same weights and losses as training from the local
    folder in one go."""
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/cache"
    s3 = [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'local'}", "train.stream_disk_gb=0.000001"]
    common = ["train.checkpoint_every=3", "train.shuffle_window=1", "train.caption_dropout=0.3"]
    storage.upload_dir(sd15_cache, uri, cfg_for(tiny_sd15_path, *s3).storage)
    train(sd15_cache, str(tmp_path / "straight"), cfg_for(tiny_sd15_path, *common, "train.max_steps=6"))
    out = tmp_path / "streamed"
    train(uri, str(out), cfg_for(tiny_sd15_path, *s3, *common, "train.max_steps=3"))
    assert (tmp_path / "local" / "streams").is_dir() and not (tmp_path / "local" / "caches").exists()
    train(uri, str(out), cfg_for(tiny_sd15_path, *s3, *common, "train.max_steps=6"), resume="latest")
    assert_bit_equal(adapter_weights(tmp_path / "straight" / "adapter"), adapter_weights(out / "adapter"))
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert a["losses"] == b["losses"]



MIXED = ["data.synth.aspect_ratios=[1.0,2.0,0.5]", "encode.buckets=[64x64,64x128,128x64]", "encode.random_flip=true"]


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, tiny_sdxl_path):
    """Square, wide and tall circles, encoded into three buckets."""
    return make_cache(tmp_path_factory.mktemp("mixed"), tiny_sdxl_path, *MIXED)


@pytest.mark.slow
def test_a_mixed_bucket_run_killed_mid_epoch_resumes_bit_equal(tmp_path, tiny_sdxl_path, mixed_cache):
    """Wide, tall and square samples in three buckets, so every micro-batch has one latent shape:
    a run killed (SIGKILL) after a checkpoint in the middle of an epoch and resumed ends with the
    same weights, EMA and losses as one never interrupted, and logs a plain line per bucket."""
    # 17 samples in buckets of 8, 4 and 5: 8 micro-batches an epoch, so the checkpoints at steps 3
    # and 6 (micro-batches 6 and 12) are both in the middle of an epoch.
    overrides = MIXED + ["train.max_steps=8", "train.checkpoint_every=3", "train.grad_accum=2", "train.ema_decay=0.9",
                         "train.caption_dropout=0.3", "train.lr=1e-3"]
    from t2iops.encode.cache import CacheReader

    reader = CacheReader(mixed_cache, "train")
    shapes = {reader.bucket_of(i): tuple(reader.sample(i)["latent"].shape[-2:]) for i in range(len(reader))}
    assert len(set(shapes.values())) == 3  # three latent shapes, which no batch may mix
    cfg = cfg_for(tiny_sdxl_path, *overrides)
    train(mixed_cache, str(tmp_path / "straight"), cfg)

    out = tmp_path / "interrupted"
    killed_at, stderr = train_killed_after_a_checkpoint(mixed_cache, out, tiny_sdxl_path, overrides)
    assert killed_at < "step-000008", "the run finished before it could be interrupted"
    position = json.loads((out / "checkpoints" / killed_at / "state" / "trainer.json").read_text())
    assert position["batch"] != 0  # in the middle of an epoch
    for bucket in ("64x64", "64x128", "128x64"):
        assert f"bucket {bucket}: ".encode() in stderr

    train(mixed_cache, str(out), cfg, resume="latest")
    a, b = assert_resumed_as_straight(tmp_path / "straight", out, killed_at)
    assert a["buckets"] == b["buckets"] and [r["bucket"] for r in b["buckets"]] == ["64x64", "64x128", "128x64"]
    assert all(r["micro_batches_per_epoch"] > 0 for r in b["buckets"])
    assert sum(r["samples_seen"] for r in b["buckets"]) == b["samples_seen"] == 32


def test_validation_on_mixed_buckets(tmp_path, tiny_sdxl_path, mixed_cache):
    """Validation on a val split of several buckets: a fixed loss batch per bucket (its mean logged
    per bucket, ``val_loss`` the mean over all their samples), every sample generated and scored
    at its own bucket's size, and a grid whose rows keep those sizes."""
    import numpy as np
    from PIL import Image

    from t2iops.encode.cache import CacheReader
    from t2iops.train.data import uncond_embeddings
    from t2iops.train.validation import loss_batches

    reader = CacheReader(mixed_cache, "val")
    names = ["x".join(map(str, reader.buckets[reader.bucket_of(i)])) for i in range(len(reader))]
    assert len(set(names)) >= 2, names  # the split really mixes buckets
    shown = 5
    batches = loss_batches(reader, 2, seed=0, uncond=uncond_embeddings(reader))
    assert sorted(batches) == sorted(set(names))
    for name, batch in batches.items():  # one bucket a batch, up to validation_samples of it
        h, w = map(int, name.split("x"))
        assert len(batch["latents"]) == min(2, names.count(name))
        assert tuple(batch["conditions"].shape[-2:]) == (h, w)
    again = loss_batches(reader, 2, seed=0, uncond=uncond_embeddings(reader))
    assert all(torch.equal(batches[n][k], again[n][k]) for n in batches for k in batches[n])

    out = tmp_path / "run"
    cfg = cfg_for(tiny_sdxl_path, *MIXED, "train.max_steps=1", "train.checkpoint_every=1", "train.validate_every=1",
                  f"train.validation_samples={shown}", "train.validation_inference_steps=1")
    train(mixed_cache, str(out), cfg)
    rounds = json.loads((out / "summary.json").read_text())["validation"]
    assert [r["step"] for r in rounds] == [0, 1]
    counts = {n: min(shown, names.count(n)) for n in set(names)}
    for r in rounds:
        assert {f"val_loss_{n}" for n in counts} | {"step", "val_loss", "edge_f1"} == set(r)
        weighted = sum(r[f"val_loss_{n}"] * k for n, k in counts.items()) / sum(counts.values())
        assert r["val_loss"] == pytest.approx(weighted, rel=1e-5)
        assert np.isfinite(r["edge_f1"])

    # The grid: the first `shown` val samples, each row at its sample's size on a black canvas.
    sizes = [tuple(map(int, n.split("x"))) for n in names[:shown]]
    grid = np.asarray(Image.open(out / "validation" / "step-000001.png").convert("RGB"))
    width = max(w for _, w in sizes)
    assert grid.shape[:2] == (sum(h for h, _ in sizes), 2 * width)
    top = 0
    for (h, w), i in zip(sizes, range(shown)):
        condition = reader.sample(i)["condition"].permute(1, 2, 0).numpy()
        assert np.array_equal(grid[top:top + h, :w], condition)  # at its own size, not resized
        assert not grid[top:top + h, w:width].any() and not grid[top:top + h, width + w:].any()  # padding
        top += h


def train_killed_after_a_checkpoint(cache: str, out: Path, model: str, overrides: list[str]) -> tuple[str, bytes]:
    """``t2iops train`` as a process, SIGKILLed once its first checkpoint is complete: the
    checkpoint it was killed after, and what it wrote on stderr."""
    cmd = [sys.executable, "-m", "t2iops.cli", "train", "--cache", cache, "--out", str(out),
           "--params", str(preset_path("toy"))]
    for o in base_overrides(model) + overrides:
        cmd += ["-S", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    return latest.read_text(), stderr


def assert_resumed_as_straight(straight: Path, out: Path, killed_at: str) -> tuple[dict, dict]:
    """The resumed run ends as the uninterrupted one: adapter, final EMA and losses bit for bit;
    returns both summaries."""
    assert_bit_equal(adapter_weights(straight / "adapter"), adapter_weights(out / "adapter"))
    final = "checkpoints/step-000008/state/ema.safetensors"
    assert_bit_equal(load_file(str(straight / final)), load_file(str(out / final)))
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert a["losses"] == b["losses"] and b["resumed_from"].endswith(killed_at)
    return a, b
