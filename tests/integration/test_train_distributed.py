"""Two CPU ranks (torchrun, gloo) training the tiny SDXL adapter under DeepSpeed ZeRO-2 and
ZeRO-3: the same run as one plain process up to float rounding, exact resume of the
partitioned state, and non-finite steps dropped on every rank."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.encode import encode_dataset
from t2iops.presets import preset_config, preset_path
from t2iops.train import train

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def overrides(model, *extra):
    return [f"model.base_model={model}", "data.synth.count=20", "data.val_fraction=0.0", "data.test_fraction=0.0",
            "encode.resolution=64", "encode.batch_size=10", "train.batch_size=4", "train.grad_accum=2",
            "train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=3", "train.lr=1e-3", "train.log_every=1",
            "train.caption_dropout=0.2", "train.timestep_sampling=cubic", *extra]  # over the toy preset


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_sdxl_path):
    root = tmp_path_factory.mktemp("dist")
    cfg = preset_config("toy", overrides(tiny_sdxl_path))
    synthesize(str(root / "data"), cfg)
    validate(str(root / "data"), str(root / "validated"), cfg)
    encode_dataset(str(root / "data"), str(root / "validated"), str(root / "cache"), cfg)
    return root / "cache"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cache, out, model, *extra, resume=None, cwd=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "t2iops.cli", "train", "--cache", str(cache), "--out", str(out), "--params", str(preset_path("toy"))]
    if resume:
        cmd += ["--resume", resume]
    for o in overrides(model, *extra):
        cmd += ["-S", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=cwd or out.parent, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "summary.json").read_text())


def weights(folder):
    return load_file(str(Path(folder) / "adapter" / "diffusion_pytorch_model.safetensors"))


def plain_run(cache, out, model, *extra):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(str(cache), str(out), preset_config("toy", overrides(model, *extra)))
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory, cache, tiny_sdxl_path):
    """The one-process reference run with the default overrides, trained once for the ZeRO-2
    tests of this module (the same cache and configuration, so the same run)."""
    out = tmp_path_factory.mktemp("plain") / "plain"
    return plain_run(cache, out, tiny_sdxl_path), out


def test_zero2_on_two_ranks_matches_one_process_and_resumes_exactly(tmp_path, cache, plain, tiny_sdxl_path):
    plain, plain_out = plain
    zero2 = torchrun(cache, tmp_path / "zero2", tiny_sdxl_path, "train.zero_stage=2")
    assert zero2["optimizer"] == "deepspeed-zero2" and zero2["world_size"] == 2
    # The same global batches and draws, split over two ranks: the same run up to rounding.
    assert zero2["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    a, b = weights(plain_out), weights(tmp_path / "zero2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)  # Adam amplifies rounding near g=0
    # Each rank saved its own ZeRO partition of the optimizer state.
    ds = tmp_path / "zero2" / "checkpoints" / "step-000002" / "state" / "deepspeed" / "state"
    assert sorted(p.name for p in ds.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    # Resume the partitioned state from the step-2 checkpoint in a fresh run folder.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "zero2" / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    (resumed / "checkpoints" / "latest").write_text("step-000002")
    again = torchrun(cache, resumed, tiny_sdxl_path, "train.zero_stage=2", resume="latest")
    assert again["losses"] == zero2["losses"]
    b2 = weights(resumed)
    for k in b:
        assert torch.equal(b[k], b2[k]), k


def test_zero3_on_two_ranks_drops_non_finite_steps_like_one_process(tmp_path, cache, tiny_sdxl_path):
    poisoned = tmp_path / "cache"
    shutil.copytree(cache, poisoned)
    shard = next((poisoned / "latents").rglob("shard-00000.safetensors"))
    tensors = load_file(str(shard))
    tensors["latent_moments"][3] = float("nan")  # one broken sample
    save_file(tensors, str(shard))

    plain = plain_run(poisoned, tmp_path / "plain", tiny_sdxl_path)
    # ZeRO-3 from a user DeepSpeed JSON: "auto" filled in from our config, extras kept.
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 2,
                                   "zero_optimization": {"stage": 3, "reduce_bucket_size": 200000}}))
    zero3 = torchrun(poisoned, tmp_path / "zero3", tiny_sdxl_path, f"train.deepspeed_config={ds_json}")
    assert zero3["optimizer"] == "deepspeed-zero3"
    assert plain["skipped_steps"] >= 1
    assert zero3["skipped_steps"] == plain["skipped_steps"]
    assert [x is None for x in zero3["losses"]] == [x is None for x in plain["losses"]]
    good = [(p, z) for p, z in zip(plain["losses"], zero3["losses"]) if p is not None]
    assert [z for _, z in good] == pytest.approx([p for p, _ in good], rel=1e-5)
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "zero3")
    for k in a:
        assert torch.isfinite(b[k]).all()
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)  # Adam amplifies rounding near g=0


def test_zero2_with_optimizer_offload_in_one_process(tmp_path, cache, plain, tiny_sdxl_path):
    """DeepSpeed with world size 1 (no launcher) and the optimizer state offloaded to the CPU."""
    plain, plain_out = plain
    out = tmp_path / "offload"
    cmd = [sys.executable, "-m", "t2iops.cli", "train", "--cache", str(cache), "--out", str(out),
           "--params", str(preset_path("toy"))]
    for o in overrides(tiny_sdxl_path, "train.zero_stage=2", "train.offload_optimizer=true"):
        cmd += ["-S", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer"] == "deepspeed-zero2" and summary["world_size"] == 1
    assert summary["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    a, b = weights(plain_out), weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
