"""The glue the components call around a stage function: where a run keeps its durable files,
how training output reaches the Model artifact (metrics for the KFP UI: :mod:`.kfp_metrics`).

A step's durable prefix is ``<run_root>/<key>/``, the key a digest of artifact URIs the step
already has: the train step's own output artifact (unique per run and task, the same when the
step is retried, so a preempted train step resumes with ``--resume latest``), for an
evaluation shard the model it evaluates plus its data and configuration, for an encode shard
its data and configuration. The run-id placeholder is
not an input of these steps: as an input it would change every run and defeat KFP's cache.
Artifacts in the pipeline root hold the final results.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import storage
from ..config import Config, StageConfig
from ..errors import T2IError, UsageError
from ..hashing import bytes_digest

log = logging.getLogger(__name__)

RESULT_FILES = ("adapter/", "summary.json", "config.resolved.yaml")


def step_key(*sources: str) -> str:
    """A short stable name for a step's durable prefix, from what identifies the step."""
    return bytes_digest("\n".join(sources).encode(), 16)


def run_prefix(run_root: str, key: str, *parts: str) -> str:
    if not run_root:
        raise UsageError("pipeline parameter 'run_root' is empty: give an s3:// prefix or a folder")
    if not key:
        raise UsageError("the step's durable prefix has no key")
    return storage.join(run_root, key, *parts)


# ---------------------------------------------------------------------------------------
# Training
def copy_training_result(out: str, model_dir: str, cfg: Config | StageConfig) -> dict[str, Any]:
    """The adapter, summary and resolved config of a training output (not its checkpoints) into
    the Model artifact folder; returns the summary."""
    manifest = storage.read_manifest(out, cfg)
    wanted = [rel for rel in manifest["files"] if rel.startswith(RESULT_FILES)]
    if not any(rel.startswith("adapter/") for rel in wanted):
        raise T2IError(f"training output {out} has no adapter/ in its manifest")
    target = Path(model_dir)
    for rel in wanted:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(storage.read_bytes(storage.join(out, rel), cfg))
    (target / storage.MANIFEST).write_text(json.dumps({**manifest, "source": out}, indent=2))
    return json.loads((target / "summary.json").read_text())


def train_in_pod(cache_dir: str, model_dir: str, cfg: Config | StageConfig, run_root: str, run_key: str) -> dict[str, Any]:
    """Train in this pod, checkpoints under ``<run_root>/<run_key>/train``, resuming from the
    latest one. With several GPUs in the pod, one process per GPU under torchrun."""
    from ..train import train

    out = run_prefix(run_root, run_key, "train")
    gpus = _visible_gpus()
    if gpus > 1:
        with tempfile.TemporaryDirectory(prefix="t2iops-train-") as tmp:
            params = cfg.write(tmp, "params.yaml")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "t2iops.cli", "train", "--params", str(params), "--cache", cache_dir, "--out", out,
                   "--resume", "latest"]
            log.info("training on %d GPUs: %s", gpus, " ".join(cmd))
            if subprocess.run(cmd, check=False).returncode != 0:
                raise T2IError(f"training on {gpus} GPUs failed (see the log above); output {out}")
    else:
        train(cache_dir, out, cfg, resume="latest")
    return copy_training_result(out, model_dir, cfg)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def train_distributed(
    cache_uri: str, model_dir: str, cfg: Config | StageConfig, run_root: str, run_key: str, nodes: int, gpus_per_node: int,
    settings_json: str,
) -> dict[str, Any]:
    """Launch the multi-node job (TrainJob / PyTorchJob per the compiled settings), await it,
    then fetch its result into the Model artifact."""
    from .settings import PipelineSettings
    from .trainjob import current_namespace, job_object, launch_and_wait, spec_from_settings

    settings = PipelineSettings.model_validate_json(settings_json)
    launcher = settings.train_launcher
    out = run_prefix(run_root, run_key, "train")
    spec = spec_from_settings(
        settings, run_id=run_key, namespace=launcher.namespace or current_namespace(), nodes=nodes,
        gpus_per_node=gpus_per_node, cache_uri=cache_uri, out_uri=out, config_yaml=cfg.to_yaml(),
    )
    job = job_object(launcher.kind, spec)
    launch_and_wait(job, poll_seconds=launcher.poll_seconds, timeout_s=launcher.timeout_hours * 3600)
    return copy_training_result(out, model_dir, cfg)


# ---------------------------------------------------------------------------------------
# Sharded steps (evaluation, encode)
def shard_uri(run_root: str, key: str, index: int, count: int, stage: str = "evaluate") -> str:
    return run_prefix(run_root, key, stage, f"shard-{index}-of-{count}")


def check_shards(shards: list[int], parameter: str = "eval_shards") -> int:
    """The ParallelFor items must be 0..n-1; returns n."""
    if not shards or sorted(shards) != list(range(len(shards))):
        raise UsageError(f"pipeline parameter {parameter!r} must be [0, 1, ..., n-1], got {shards}")
    return len(shards)


def copy_report(evaluation_dir: str, name: str, target: str) -> None:
    source = Path(evaluation_dir) / name
    if source.exists():
        shutil.copyfile(source, target)
    else:
        Path(target).write_text(f"(the evaluation wrote no {name})\n")

