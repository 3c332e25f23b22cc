"""What a KFP user sees in the run's Metrics tabs: a few named scalars per step, logged on a KFP v2
``Metrics`` output artifact (``dsl.Output[dsl.Metrics]``, ``log_metric``), the type the v2 UI
shows (``system.Metrics``). KFP v2 ignores the v1 ``mlpipeline-metrics`` file.

* train: ``final_loss``, ``samples_per_s``, ``steps``, ``skipped_steps``, ``peak_memory_gb`` and
  the last validation round (``val_loss``, ``val_<fidelity>``);
* evaluate (the merge step): per condition-fidelity metric ``<name>_with_adapter``,
  ``<name>_without_adapter`` and ``<name>_lift`` (the same for FID/KID when computed),
  ``num_samples`` and ``gate_passed`` (1 or 0).

The values come from the stage's own outputs (``summary.json``, ``metrics.json``), so what the UI
shows is what the artifacts hold.
"""
from __future__ import annotations

import math
from typing import Any, Optional

TRAIN_KEYS = ("final_loss", "samples_per_s", "steps", "skipped_steps")
VARIANTS = ("with_adapter", "without_adapter", "lift")


def training_metrics(summary: dict) -> dict[str, float]:
    """The train step's metrics from its ``summary.json``."""
    values: dict[str, Optional[float]] = {k: summary.get(k) for k in TRAIN_KEYS}
    peak = (summary.get("peak_memory") or {}).get("bytes")
    values["peak_memory_gb"] = peak / 2**30 if _finite(peak) else None
    last = (summary.get("validation") or [{}])[-1]
    for name, value in last.items():
        if name != "step":
            values[name if name.startswith("val_") else f"val_{name}"] = value
    return {k: float(v) for k, v in values.items() if _finite(v)}


def evaluation_metrics(result: dict) -> dict[str, float]:
    """The evaluation's metrics from its ``metrics.json`` (as :func:`merge_shards` returns it)."""
    values: dict[str, Any] = {"num_samples": result.get("num_samples")}
    for name, entry in result.items():
        if isinstance(entry, dict) and "with_adapter" in entry:
            for variant in VARIANTS:
                values[f"{name}_{variant}"] = entry.get(variant)
    gate = result.get("gate")
    if isinstance(gate, dict) and "passed" in gate:
        values["gate_passed"] = 1.0 if gate["passed"] else 0.0
    return {k: float(v) for k, v in values.items() if _finite(v)}


def log_metrics(artifact: Any, values: dict[str, float]) -> None:
    """Log each value on a KFP ``Metrics`` artifact, in a stable order."""
    for name in sorted(values):
        artifact.log_metric(name, values[name])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))

