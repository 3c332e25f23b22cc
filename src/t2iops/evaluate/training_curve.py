"""The training loss of the run that made the adapter, for the report's loss-curve image.

Read from the training output ``O`` (``--adapter O`` or ``O/adapter``), in this order:

1. ``O/summary.json`` ``losses``: the mean loss of every optimizer step (``null`` for skipped
   steps), published with the adapter under the run's manifest and carried across resumes in
   the checkpoints, so it is complete;
2. ``O/logs/dvclive/plots/metrics/train/loss.tsv`` (``step``, ``loss`` every
   ``train.log_every`` steps), for runs whose summary has no loss history.

An adapter from the hub or a folder without either gives no curve; the report says so. The
file is data from storage: it is parsed as JSON / TSV, checked for finite numbers, never
executed, and a bad one only costs the curve (with a warning naming it).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from .. import storage

log = logging.getLogger(__name__)

TRAINING_CURVE = "training_loss.json"  # what each evaluation shard keeps of it
SUMMARY = "summary.json"
DVCLIVE_LOSS = "logs/dvclive/plots/metrics/train/loss.tsv"
MAX_POINTS = 1000  # longer runs are averaged in equal buckets of steps


def read_training_curve(adapter: str, storage_cfg: Any = None) -> dict:
    """``{"steps", "loss", "source", "missing"}``: at most :data:`MAX_POINTS` (step, mean loss)
    points, or empty lists and ``missing`` saying why."""
    tried = []
    for run in _run_folders(str(adapter)):
        for name, parse in ((SUMMARY, _from_summary), (DVCLIVE_LOSS, _from_dvclive)):
            uri = storage.join(run, name)
            tried.append(uri)
            text = _read(uri, storage_cfg)
            if text is None:
                continue
            try:
                steps, losses = parse(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("loss curve: %s is not usable (%s); the report shows no loss curve from it", uri, exc)
                continue
            if steps:
                steps, losses = bucket_means(steps, losses, MAX_POINTS)
                return {"steps": steps, "loss": losses, "source": uri, "missing": None}
    why = f"no training loss history found (looked for {', '.join(tried)})" if tried else \
        f"the adapter {adapter} is not a training output folder or s3:// prefix"
    return {"steps": [], "loss": [], "source": None, "missing": why}


def _run_folders(adapter: str) -> list[str]:
    """The training output the adapter came from: ``O`` itself, or ``O`` for ``O/adapter``."""
    if not storage.is_s3(adapter) and not Path(adapter).is_dir():
        return []  # a hub id: no training run to read
    folders = [adapter]
    trimmed = adapter.rstrip("/")
    if trimmed.rsplit("/", 1)[-1] == "adapter":
        folders.append(trimmed.rsplit("/", 1)[0])
    return folders


def _read(uri: str, storage_cfg: Any) -> Optional[str]:
    try:
        return storage.read_text(uri, storage_cfg)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except Exception as exc:  # the curve is optional: a store error costs the image, not the run
        log.warning("loss curve: cannot read %s (%s)", uri, exc)
        return None


def _from_summary(text: str) -> tuple[list[int], list[float]]:
    losses = json.loads(text).get("losses")
    if losses is None:
        return [], []
    if not isinstance(losses, list):
        raise ValueError("'losses' is not a list")
    steps, values = [], []
    for step, value in enumerate(losses, start=1):
        if value is None:
            continue  # a skipped (non-finite) step
        value = float(value)
        if math.isfinite(value):
            steps.append(step)
            values.append(value)
    return steps, values


def _from_dvclive(text: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, float] = {}
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        value = float(row["loss"])
        if math.isfinite(value):
            by_step[int(row["step"])] = value  # a resumed run logs some steps again: keep the last
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def bucket_means(steps: list[int], values: list[float], max_points: int) -> tuple[list[int], list[float]]:
    """At most ``max_points`` points: the mean of each run of consecutive points, at its last step."""
    if len(steps) <= max_points:
        return list(steps), list(values)
    size = math.ceil(len(steps) / max_points)
    out_steps, out_values = [], []
    for start in range(0, len(steps), size):
        chunk = values[start:start + size]
        out_steps.append(steps[start:start + size][-1])
        out_values.append(sum(chunk) / len(chunk))
    return out_steps, out_values


def training_run_reference(adapter: str, model_cfg: Any, storage_cfg: Any = None):
    """The base model the training run behind ``adapter`` recorded in its summary.json (checked
    against the ``model.*`` settings), or the one ``model.*`` names for an adapter with no run
    (a hub id, a bare folder)."""
    from ..models.reference import reference_from_record

    for run in _run_folders(str(adapter)):
        uri = storage.join(run, SUMMARY)
        text = _read(uri, storage_cfg)
        if text is None:
            continue
        try:
            record = json.loads(text).get("base_model")
        except (ValueError, AttributeError) as exc:
            log.warning("%s is not a JSON object (%s); the base model comes from model.*", uri, exc)
            continue
        if isinstance(record, dict) and record:
            return reference_from_record(record, model_cfg, f"training run {run} ({SUMMARY})")
    return reference_from_record(None, model_cfg, str(adapter))
