"""Run the whole training pipeline on this machine under ``kfp.local``.

The same compiled components and DAG as in a cluster, each step a subprocess of the current
Python environment (SubprocessRunner) or a container of the project image (DockerRunner), CPU
only. Storage is a folder (default), a moto S3 server started for the run on 127.0.0.1
(``s3="moto"``) or an S3 server already running (its URL), so the s3:// paths of a cluster run
are exercised too.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..config import Config, load_config
from ..errors import UsageError
from ..ports import free_port
from .kfp_workarounds import local_conditions_evaluated, process_state_kept
from .runtime import flatten_overrides, stage_parameters
from .settings import PipelineSettings, load_settings

log = logging.getLogger(__name__)

LOCAL_BUCKET = "t2iops-local"

# Small enough for a CPU smoke run of every step in a few minutes; the numbers are data.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.synth.count": 24,
    "data.synth.resolution": 64,
    "data.val_fraction": 0.2,
    "data.test_fraction": 0.25,
    "encode.resolution": 64,
    "encode.batch_size": 8,
    "train.max_steps": 2,
    "train.batch_size": 2,
    "train.checkpoint_every": 1,
    "evaluate.num_samples": 2,
    "evaluate.batch_size": 1,  # one batch per shard: two shards need two batches
    "evaluate.num_inference_steps": 2,
    "evaluate.fid": "off",
}


def smoke_overrides(explicit: Sequence[str] = ()) -> dict[str, Any]:
    """The smoke sizes, less the keys the user set explicitly (``-S``: a key given, or a section
    holding it, e.g. ``-S data.synth={...}``, wins over the smoke size). Logs what it applied and
    what it kept, so a smoke run never silently replaces a value the user typed."""
    given = set(explicit)

    def kept(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1))

    applied = {k: v for k, v in SMOKE_OVERRIDES.items() if not kept(k)}
    skipped = sorted(set(SMOKE_OVERRIDES) - set(applied))
    log.info("--smoke: %s", ", ".join(f"{k}={v}" for k, v in applied.items()) or "nothing to shrink")
    if skipped:
        log.info("--smoke: kept your -S for %s", ", ".join(skipped))
    return applied


@dataclass
class LocalOutcome:
    gate_passed: bool
    seconds: float
    pipeline_root: Path
    run_root: str
    registry_uri: str



@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with dummy credentials in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=LOCAL_BUCKET)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_base_model(choice: str, cfg: Config, work: Path) -> str:
    """'tiny-sd15' / 'tiny-sdxl': build the tiny model into the work folder; 'config': the
    configured model.base_model (made absolute when it is a local folder); else a path/URI."""
    if choice in ("tiny-sd15", "tiny-sdxl"):
        from ..models.tiny import build_tiny_model

        target = work / "models" / choice
        if not (target / "model_index.json").exists():
            build_tiny_model(choice.split("-")[1], target)
        return str(target.resolve())
    if choice == "config":
        base = cfg.model.base_model
        return str(Path(base).resolve()) if Path(base).exists() else base
    return str(Path(choice).resolve()) if Path(choice).exists() else choice


def run_local(
    work: str | Path,
    cfg: Config,
    parameters: Optional[dict[str, Any]] = None,
    s3: str = "none",
    base_model: str = "tiny-sd15",
    smoke: bool = True,
    settings: Optional[str | Path] = None,
    runner: str = "subprocess",
    image: Optional[str] = None,
    explicit: Sequence[str] = (),
) -> LocalOutcome:
    """Run the pipeline end to end; returns whether the gate passed and where things went.

    ``s3``: 'none' (a folder), 'moto' (a moto server started for the run) or the endpoint URL of
    an S3 server already running (bucket ``t2iops-local``, created when missing). With S3, a base
    model or a ``data_source`` given as a local folder is uploaded first, so every step reads its
    inputs from the store, as in a cluster. ``runner``: 'subprocess' (this Python environment) or
    'docker' (every step in the project image, ``image`` or the settings' ``image``).
    ``explicit``: the keys the user set with ``-S``; ``smoke`` never replaces those."""
    from kfp import local

    from .compile import build_pipeline, read_package, validate_arguments

    if s3 not in ("none", "moto") and not s3.startswith(("http://", "https://")):
        raise UsageError(f"--s3 must be 'none', 'moto' or an S3 endpoint URL (http://...), got {s3!r}")
    if runner not in ("subprocess", "docker"):
        raise UsageError(f"--runner must be 'subprocess' or 'docker', got {runner!r}")
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    overrides = flatten_overrides(cfg.to_dict())
    if smoke:
        overrides.update(smoke_overrides(explicit))
    overrides["model.base_model"] = resolve_base_model(base_model, cfg, work)
    overrides["storage.cache_dir"] = str(work / "cache")
    parameters = dict(parameters or {})
    local_conditions_evaluated()
    cluster = load_settings(settings, image=image)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.enter_context(process_state_kept())
        if s3 != "none":
            endpoint = stack.enter_context(moto_s3()) if s3 == "moto" else existing_s3(s3)
            overrides["storage.endpoint_url"] = endpoint
            parameters.setdefault("run_root", f"s3://{LOCAL_BUCKET}/runs")
            parameters.setdefault("registry_uri", f"s3://{LOCAL_BUCKET}/registry")
        else:
            parameters.setdefault("run_root", str(work / "runs"))
            parameters.setdefault("registry_uri", str(work / "registry"))
        resolved = load_config(None, overrides)
        if s3 != "none":
            resolved = stage_inputs_on_s3(resolved, parameters, overrides)
        for name, value in stage_parameters(resolved).items():
            parameters.setdefault(name, value)
        pipeline = build_pipeline(resolved, cluster)
        package = work / "pipeline.yaml"
        from kfp import compiler

        compiler.Compiler().compile(pipeline, str(package))
        validate_arguments(read_package(package), parameters)
        root = work / "kfp-root"
        local.init(runner=_runner(runner, work, cluster, root, resolved, parameters), pipeline_root=str(root), raise_on_error=True)
        task = pipeline(**parameters)
        gate = bool(task.output)
        if s3 != "none" and gate:
            _mirror_registry(parameters["registry_uri"], work / "registry-copy", resolved)
    return LocalOutcome(gate, time.monotonic() - started, root, parameters["run_root"], parameters["registry_uri"])


def _runner(kind: str, work: Path, cluster: PipelineSettings, root: Path, cfg: Config, parameters: dict[str, Any]):
    """The kfp.local runner of ``kind``; a docker one after checking the daemon and the image."""
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    from .containers import docker_runner, writable_by_image_user

    image = cluster.image  # the settings the pipeline was built with (--image / T2IOPS_IMAGE applied)
    runner = docker_runner(work, image, run_label=work.name)  # daemon and image checked before anything is made
    local_outputs = [Path(parameters[p]) for p in ("run_root", "registry_uri") if not str(parameters[p]).startswith("s3://")]
    writable_by_image_user(root, Path(cfg.storage.cache_dir), *local_outputs)
    log.info("steps run in the image %s (docker), as its user uid 1000", image)
    return runner


def existing_s3(endpoint: str) -> str:
    """An S3 server already running (MinIO, moto, a cloud endpoint): the run's bucket is created
    when missing; credentials come from the standard AWS chain."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    try:
        client.head_bucket(Bucket=LOCAL_BUCKET)
    except Exception:
        client.create_bucket(Bucket=LOCAL_BUCKET)
    return endpoint


def stage_inputs_on_s3(cfg: Config, parameters: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """Upload a local base model and a local ``data_source`` folder to the run's bucket and point
    the run at them: with S3 storage every step reads its inputs from the store."""
    from .. import storage

    base = cfg.model.base_model
    if Path(base).is_dir():
        uri = f"s3://{LOCAL_BUCKET}/models/{Path(base).name}"
        storage.upload_dir(base, uri, cfg)
        overrides["model.base_model"] = uri
    source = parameters.get("data_source")
    if isinstance(source, str) and source not in ("synth", "dvc") and Path(source).is_dir():
        uri = f"s3://{LOCAL_BUCKET}/data/{Path(source).resolve().name}"
        storage.upload_dir(source, uri, cfg)
        parameters["data_source"] = uri
    return load_config(None, overrides)


def _mirror_registry(registry_uri: str, target: Path, cfg: Config) -> None:
    """The moto server ends with the run: keep a copy of what was published."""
    from .. import storage

    storage.download_dir(registry_uri, target, cfg)
    log.info("registry %s (moto, gone after the run) copied to %s", registry_uri, target)
