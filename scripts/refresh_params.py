"""Rewrite params.yaml as the complete resolved configuration (every key, current values).

DVC tracks parameters by key, so params.yaml must hold every key a stage names; run this after
adding a key to t2iops.config (a test fails while params.yaml lags behind the schema)."""
from pathlib import Path

from t2iops.config import load_config

HEADER = """\
# The single source of hyperparameters for every stage (DVC tracks it). This is the embedded
# default: offline, CPU, synthetic circles, the toy base model. Every key is listed; ranges and
# descriptions: `t2iops config schema`. Change a value here, or per run with
# `t2iops <stage> -S key=value` / `dvc exp run -S key=value`.
# Set here, not built in: evaluate.num_samples 32 (a quicker report) and the gate
# evaluate.gate.min_circle_iou 0.6, which stops an adapter that did not learn the circles before
# export (the toy workflow measured circle IoU 0.74 with the adapter, 0.37 without).
"""

path = Path(__file__).resolve().parents[1] / "params.yaml"
cfg = load_config(path)
path.write_text(HEADER + cfg.to_yaml())
print(f"wrote {path}")
