"""The optimizer and its learning-rate schedule are built together, once, and every optimizer step
runs at the rate the schedule gives for it."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from t2iops.config import TrainConfig
from t2iops.train.distributed import DistInfo
from t2iops.train.optimization import LRSchedule, PlainOptimization

SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.parametrize("settings, expected", [
    # Linear warm-up over 4 steps, then linear decay to 0 over the remaining 10.
    (dict(lr=1.0, warmup_steps=4, max_steps=14, lr_schedule="linear"),
     {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 9: 0.5, 13: 0.1, 14: 0.0}),
    # Cosine from the first step: half way is half the rate, the end is 0.
    (dict(lr=0.5, warmup_steps=0, max_steps=10, lr_schedule="cosine"), {0: 0.5, 5: 0.25, 10: 0.0}),
    # Cosine after 2 warm-up steps, over the 4 that remain.
    (dict(lr=1e-3, warmup_steps=2, max_steps=6, lr_schedule="cosine"),
     {0: 5e-4, 1: 1e-3, 2: 1e-3, 3: 1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), 4: 5e-4,
      5: 1e-3 * 0.5 * (1 + math.cos(3 * math.pi / 4))}),
    # Constant after warm-up, for ever (a resumed run past max_steps keeps it).
    (dict(lr=0.5, warmup_steps=2, max_steps=10, lr_schedule="constant"), {0: 0.25, 1: 0.5, 2: 0.5, 400: 0.5}),
])
def test_the_schedule_gives_each_step_its_rate(settings, expected):
    schedule = LRSchedule.from_config(TrainConfig(**settings))
    assert {step: schedule(step) for step in expected} == pytest.approx(expected, abs=1e-12)


def count_optimizers(monkeypatch) -> list[str]:
    """The class of every torch optimizer constructed from now on, in order."""
    built: list[str] = []
    original = torch.optim.Optimizer.__init__

    def init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", init)
    return built


def test_one_adamw_is_built_and_every_step_runs_at_the_scheduled_rate(monkeypatch):
    built = count_optimizers(monkeypatch)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    t = TrainConfig(lr=0.1, warmup_steps=2, max_steps=5, lr_schedule="cosine", weight_decay=0.0, max_grad_norm=None)
    opt = PlainOptimization(layer, t, SOLO)
    assert built == ["AdamW"]
    assert opt.optimizer.defaults["lr"] == t.lr  # the base rate the schedule scales from
    for step in range(t.max_steps):
        lr = opt.apply_schedule(step)
        assert lr == opt.schedule(step) and [g["lr"] for g in opt.param_groups] == [lr]
        before = layer.weight.detach().clone()
        opt.backward(layer(torch.randn(4, 8)).pow(2).mean(), bad=False)
        applied, _ = opt.step(bad=False)
        assert applied
        if step == 0:  # Adam's first update moves each weight by about the rate itself
            assert (layer.weight - before).abs().max().item() == pytest.approx(lr, rel=1e-3)
    assert built == ["AdamW"]


SCRIPT = r"""
import json, sys
import torch
from t2iops.config import TrainConfig
from t2iops.train.deepspeed_config import generated_config
from t2iops.train.distributed import init_distributed, shutdown
from t2iops.train.optimization import build_optimization

built = []
original = torch.optim.Optimizer.__init__
def init(self, *args, **kwargs):
    built.append(type(self).__name__)
    original(self, *args, **kwargs)
torch.optim.Optimizer.__init__ = init

offload = sys.argv[1] == "offload"
t = TrainConfig(lr=1e-2, warmup_steps=2, max_steps=4, lr_schedule="linear", batch_size=2, zero_stage=2,
                offload_optimizer=offload, grad_accum=1, mixed_precision="no")  # a CPU step per step
dist = init_distributed(use_deepspeed=True)
torch.manual_seed(0)
opt = build_optimization(torch.nn.Linear(8, 8), t, dist, generated_config(t, dist.world_size))
rates = []
for step in range(t.max_steps):
    lr = opt.apply_schedule(step)
    rates.append([lr, [g["lr"] for g in opt.param_groups], [g["lr"] for g in opt.engine.optimizer.param_groups]])
    opt.backward(opt.module(torch.randn(2, 8)).pow(2).mean(), bad=False)
    opt.step(bad=False)
print(json.dumps({"built": built, "rates": rates, "schedule": [opt.schedule(s) for s in range(t.max_steps)]}))
shutdown()
"""


@pytest.mark.slow  # DeepSpeed's CPU Adam is compiled on first use
@pytest.mark.parametrize("mode", ["offload", "on-rank"])
def test_deepspeed_builds_one_optimizer_and_steps_at_the_scheduled_rate(tmp_path, mode):
    pytest.importorskip("deepspeed")
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # One optimizer, never one built and thrown away: CPU Adam (AdamW mode) where ZeRO offloads.
    assert out["built"] == (["DeepSpeedCPUAdam"] if mode == "offload" else ["AdamW"])
    assert out["schedule"] == pytest.approx([5e-3, 1e-2, 1e-2, 5e-3])
    for lr, groups, engine_groups in out["rates"]:
        assert set(groups) == set(engine_groups) == {lr}
