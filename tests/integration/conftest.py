"""A trained tiny adapter and its evaluation report, shared by the tests of the report
(tests/integration/test_eval_report.py and test_report_browser.py, both in the xdist group
``eval-report``, so one worker builds them once)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from t2iops.presets import preset_config

REPORT_SCALES = "[1.0,0.0,0.5]"  # the first is the headline; the sweep is shown sorted
REPORT_GATE = 0.99  # evaluate.gate.min_circle_iou for the sweep report: a tiny adapter misses it


def report_cfg(work: Path, base: str, *extra: str):
    return preset_config("toy", [  # CPU-sized, with cubic timesteps, guidance 5, one scale, no gate
        "train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]",
        "evaluate.gate.min_circle_iou=null",
        f"model.base_model={base}", "data.synth.count=12", "data.synth.resolution=64",
        "data.val_fraction=0", "data.test_fraction=0.5",
        "encode.resolution=64", "encode.batch_size=12",
        "train.max_steps=3", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=1000",
        "train.validate_every=0",
        "evaluate.num_samples=4", "evaluate.batch_size=4", "evaluate.num_inference_steps=1", "evaluate.fid=off",
        "evaluate.grid_rows=2", f"storage.cache_dir={work / 'cache'}", *extra,
    ])


@pytest.fixture(scope="session")
def report_trained(tiny_sd15_path, tmp_path_factory):
    """``(work, base)``: the synthetic data, validated rows, latents and a 3-step training run
    ``work/O`` on the tiny SD1.5 model (so the run has a loss history and DVCLive logs)."""
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.train.trainer import train

    work = tmp_path_factory.mktemp("report")
    cfg = report_cfg(work, tiny_sd15_path)
    synthesize(str(work / "data"), cfg)
    validate(str(work / "data"), str(work / "validated"), cfg)
    encode_dataset(str(work / "data"), str(work / "validated"), str(work / "cache-latents"), cfg)
    train(str(work / "cache-latents"), str(work / "O"), cfg)
    return work, tiny_sd15_path


@pytest.fixture(scope="session")
def report_sweep(report_trained):
    """``(out, metrics, progress lines)``: the real ``evaluate`` of that adapter at the scales
    :data:`REPORT_SCALES`, with a circle-IoU gate it misses (not enforced: the report shows it)."""
    from t2iops.evaluate.stage import evaluate

    work, base = report_trained
    cfg = report_cfg(work, base, f"evaluate.conditioning_scales={REPORT_SCALES}",
                     f"evaluate.gate.min_circle_iou={REPORT_GATE}")
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # the progress lines, as a pod's log would show them
    logging.getLogger("t2iops.progress").addHandler(handler)
    logging.getLogger("t2iops.progress").setLevel(logging.INFO)
    try:
        metrics = evaluate(str(work / "O" / "adapter"), str(work / "data"), str(work / "validated"),
                           str(work / "E"), cfg)
    finally:
        logging.getLogger("t2iops.progress").removeHandler(handler)
    return work / "E", metrics, [r.getMessage() for r in records]


@pytest.fixture(scope="session")
def report_config():
    """:func:`report_cfg`, for tests that evaluate the trained adapter with other settings."""
    return report_cfg
