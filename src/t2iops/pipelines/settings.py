"""The pipeline's cluster-facing settings (``pipelines/settings.yaml``), typed and validated.

Hyperparameters never live here: they travel as the ``config`` pipeline parameter and are
validated by :mod:`t2iops.config`. This file holds what the compiled pipeline asks of the
cluster: the image, the GPU node pool, per-step resources, retries, caching, the train launcher.
The image is ONE setting: ``image`` here, or the ``T2IOPS_IMAGE`` environment variable.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import UsageError

IMAGE_ENV = "T2IOPS_IMAGE"
SETTINGS_ENV = "T2IOPS_PIPELINE_SETTINGS"
PROJECT_ENV = "T2IOPS_PROJECT_DIR"
PIPELINE_FILE = Path("pipelines") / "training.py"
SETTINGS_FILE = Path("pipelines") / "settings.yaml"

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_DURATION = re.compile(r"^[0-9]+(s|m|h)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Optional[str] = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class GpuPool(_Strict):
    accelerator_type: str = Field("nvidia.com/gpu", description="extended resource name of the GPUs")
    node_selector: dict[str, str] = Field(default_factory=lambda: {"t2iops.io/pool": "gpu"})
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", value="present")]
    )
    shm_size: str = Field("16Gi", description="size limit of the memory-backed /dev/shm")

    @field_validator("shm_size")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"not a Kubernetes quantity: {v!r} (e.g. 16Gi)")
        return v


class S3Secret(_Strict):
    name: str = Field(..., min_length=1)
    keys: dict[str, str] = Field(..., min_length=1, description="environment variable -> key in the secret")


class StepResources(_Strict):
    cpu: str = "1"
    memory: str = "4Gi"
    gpus: int = Field(0, ge=0, le=16)
    cache: bool = True
    retries: int = Field(0, ge=0, le=20)
    backoff: str = "60s"
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max: str = "1800s"

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.match(str(v)):
            raise ValueError(f"not a Kubernetes quantity: {v!r}")
        return str(v)

    @field_validator("backoff", "backoff_max")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not _DURATION.match(v):
            raise ValueError(f"not a duration like 60s / 5m / 1h: {v!r}")
        return v


STEP_NAMES = ("pull", "validate", "encode", "train", "evaluate", "merge", "export", "publish")


class Steps(_Strict):
    pull: StepResources = Field(default_factory=lambda: StepResources(cpu="2", memory="8Gi", cache=False))
    validate_: StepResources = Field(default_factory=lambda: StepResources(cpu="2", memory="8Gi"), alias="validate")
    encode: StepResources = Field(default_factory=lambda: StepResources(cpu="8", memory="32Gi", gpus=1))
    train: StepResources = Field(default_factory=lambda: StepResources(cpu="8", memory="64Gi", gpus=1, retries=3))
    evaluate: StepResources = Field(default_factory=lambda: StepResources(cpu="8", memory="32Gi", gpus=1, retries=1))
    merge: StepResources = Field(default_factory=lambda: StepResources(cpu="1", memory="4Gi"))
    export: StepResources = Field(default_factory=lambda: StepResources(cpu="4", memory="16Gi", gpus=1))
    publish: StepResources = Field(default_factory=lambda: StepResources(cpu="1", memory="2Gi", cache=False))

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def get(self, name: str) -> StepResources:
        return getattr(self, "validate_" if name == "validate" else name)


class TrainLauncher(_Strict):
    kind: Literal["in-pod", "trainjob", "pytorchjob"] = "in-pod"
    trainjob_runtime: str = Field("t2iops-deepspeed", description="ClusterTrainingRuntime the TrainJob refers to (infra/k8s/runtime)")
    namespace: Optional[str] = Field(None, description="default: the pipeline pod's namespace")
    service_account: Optional[str] = "t2iops-pipeline"
    poll_seconds: int = Field(30, ge=1)
    timeout_hours: float = Field(72, gt=0)


class Defaults(_Strict):
    run_root: str = "s3://t2iops/runs"
    registry_uri: str = "s3://t2iops/registry"


class PipelineSettings(_Strict):
    image: str = Field("ghcr.io/t2iops/t2iops:0.1.0", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu_pool: GpuPool = Field(default_factory=GpuPool)
    s3_secret: Optional[S3Secret] = Field(
        default_factory=lambda: S3Secret(
            name="t2iops-s3",
            keys={"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key"},
        )
    )
    steps: Steps = Field(default_factory=Steps)
    train_launcher: TrainLauncher = Field(default_factory=TrainLauncher)
    defaults: Defaults = Field(default_factory=Defaults)


# ---------------------------------------------------------------------------------------
def find_project_root(start: Optional[Path] = None) -> Path:
    """The folder that holds ``pipelines/training.py``: $T2IOPS_PROJECT_DIR, else the first
    parent of the working directory that has it, else the source tree this package came from
    (an editable install), else the copy an installed wheel carries (``t2iops/_project``)."""
    env = os.environ.get(PROJECT_ENV)
    if env:
        root = Path(env).resolve()
        if not (root / PIPELINE_FILE).exists():
            raise UsageError(f"{PROJECT_ENV}={env} has no {PIPELINE_FILE}")
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PIPELINE_FILE).exists():
            return candidate
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parents[1], package / "_project"):
        if (candidate / PIPELINE_FILE).exists():
            return candidate
    raise UsageError(
        f"cannot find {PIPELINE_FILE}: run from a t2iops checkout, set {PROJECT_ENV}, or install"
        " t2iops from its wheel (which carries the pipeline)"
    )


def load_settings(path: Optional[str | Path] = None, image: Optional[str] = None) -> PipelineSettings:
    """Read the settings file (default: $T2IOPS_PIPELINE_SETTINGS, else pipelines/settings.yaml of
    the project); ``image`` (e.g. --image), else ``T2IOPS_IMAGE``, replaces ``image``. Errors name
    the file and the key."""
    if path is None:
        path = os.environ.get(SETTINGS_ENV) or find_project_root() / SETTINGS_FILE
    from ..config import read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "pipeline settings file")
    if image or os.environ.get(IMAGE_ENV):
        data["image"] = image or os.environ[IMAGE_ENV]
    try:
        return PipelineSettings.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).replace('validate_', 'validate')}: {e['msg']}"
            for e in err.errors()
        )
        raise UsageError(f"invalid pipeline settings ({path}): {problems}") from None


def default_data_source(cfg) -> str:
    """The pipeline's data_source for a configuration: 'synth' when data.root is the folder the
    synth stage writes (the synthetic circles, which a cluster run synthesizes again), else
    data.root itself."""
    from ..config import SYNTH_ROOT

    return "synth" if cfg.data.root == SYNTH_ROOT else cfg.data.root
