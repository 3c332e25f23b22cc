"""Checks `pipeline compile | submit | schedule` make before anything is sent: what a cluster
run needs that a local run does not. They run on the run's arguments (or the package's defaults)
and raise :class:`UsageError` (exit 2) naming the parameter and the key, before any network call.

A pod sees only its image, the hub and S3: a ``model.base_model`` or dataset that is a folder on
this machine exists nowhere in the cluster, and the failure would otherwise come from a GPU pod
minutes into the run.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import UsageError

# Keys naming something a step loads; each must be reachable from a pod.
MODEL_KEYS = ("model.base_model", "model.vae", "model.pretrained_adapter")
_REMOTE = ("s3://", "http://", "https://", "hf://")
_CRON_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
                ("month", 1, 12), ("day of week", 0, 7))
_CRON_NAMES = re.compile(r"^(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT)$", re.I)


def is_local_path(ref: str) -> bool:
    """Whether ``ref`` names a file or folder on this machine (rather than a hub id or a URI):
    it exists here, it is written as a path (absolute, ./, ../, ~), or it is the toy base model's
    folder (models/toy-base: built by `dvc repro`, in no image)."""
    from ..config import TOY_BASE_MODEL

    ref = str(ref).strip()
    if not ref or ref.startswith(_REMOTE):
        return False
    if ref == TOY_BASE_MODEL:
        return True
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def check_cluster_arguments(values: dict[str, Any]) -> None:
    """``values``: every pipeline parameter (arguments over the package's defaults)."""
    from ..config import stage_values
    from .runtime import KFP_STAGES, config_from_param, parameter_name

    for stage in KFP_STAGES:
        name = parameter_name(stage)
        if name not in values:
            continue
        cfg = stage_values(config_from_param(values[name], stage), stage)  # only what the step reads
        for key in MODEL_KEYS:
            section, field = key.split(".")
            ref = (cfg.get(section) or {}).get(field)
            if ref and is_local_path(ref):
                raise UsageError(
                    f"pipeline parameter {name!r}: {key} {ref!r} is a local path the pipeline image cannot see; "
                    "use a hub id (org/name) or an s3:// prefix (e.g. `aws s3 sync` the folder to S3 and "
                    f"-S {key}=s3://bucket/prefix)"
                )
    source = str(values.get("data_source", ""))
    if source not in ("synth", "dvc") and is_local_path(source):
        raise UsageError(
            f"pipeline parameter 'data_source' (data.root) {source!r} is a local path the pipeline image cannot see; "
            "use an s3:// prefix, or 'dvc' with dvc_repo/dvc_path for a DVC-tracked folder"
        )


def check_cron(expr: str) -> str:
    """KFP's six-field cron (seconds first); a classic five-field one gets second 0. Each field
    is checked (numbers in range, *, lists, ranges, steps, month/day names, ?)."""
    fields = str(expr).split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise UsageError(f"--cron {expr!r} must have 5 fields (min hour day month weekday) or 6 (with seconds first)")
    for value, (name, low, high) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise UsageError(f"--cron {expr!r}: {name} step {step!r} must be a positive number")
            if base in ("*", "?"):
                continue
            for bound in base.split("-", 1):
                if _CRON_NAMES.match(bound):
                    continue
                if not bound.isdigit() or not low <= int(bound) <= high:
                    raise UsageError(f"--cron {expr!r}: {name} {bound!r} is not a number from {low} to {high}")
    return " ".join(fields)
