"""One typed configuration for every stage.

The same schema is read by the CLI (``--params params.yaml -S train.lr=1e-5``), by
``dvc.yaml`` (which tracks ``params.yaml``) and by the KFP components (which receive the
overrides as pipeline parameters). Validation happens before any work starts: an unknown key,
a wrong type or an out-of-range value raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UsageError


class ConfigError(UsageError, ValueError):
    """A configuration problem, with the offending key in the message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StorageConfig(_Section):
    """Where s3:// URIs go. Credentials always come from the standard AWS chain
    (environment, shared profile, IRSA web identity), never from this file."""

    endpoint_url: Optional[str] = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000")
    region: Optional[str] = Field(None, description="AWS region; default from the AWS chain")
    max_attempts: int = Field(8, ge=1, le=50, description="boto3 retry attempts (adaptive mode)")
    cache_dir: Optional[str] = Field(
        None, description="Local cache for s3:// inputs; default ~/.cache/t2iops"
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="seconds to open a connection to the store")
    read_timeout: float = Field(20.0, gt=0, le=3600, description="seconds to wait for a response to arrive")
    retry_deadline: float = Field(
        45.0, gt=0, le=3600,
        description="seconds after which a failing call stops retrying (worst case per call: this + 20 s "
        "back-off + connect_timeout + read_timeout)",
    )
    verify: bool = Field(True, description="check sizes and sha256 of published outputs on read")
    max_concurrency: int = Field(16, ge=1, le=256, description="objects copied at once in a prefix copy")
    multipart_threshold_mb: float = Field(
        64, gt=0, description="objects at least this large are downloaded as parallel byte ranges and "
        "uploaded in parts"
    )
    multipart_chunk_mb: float = Field(
        16, ge=1, le=5120, description="bytes per range or part (uploads use at least 5, S3's smallest part)"
    )
    part_concurrency: int = Field(8, ge=1, le=64, description="ranges or parts of one large object in flight at once")


class SynthConfig(_Section):
    count: int = Field(1000, ge=1, le=10_000_000, description="number of samples")
    resolution: int = Field(64, ge=16, le=4096, description="image side in pixels")
    seed: int = Field(0, ge=0)
    min_radius_frac: float = Field(0.15, gt=0, lt=0.5)
    max_radius_frac: float = Field(0.35, gt=0, lt=0.5)
    outline_width: int = Field(2, ge=1, le=32)

    @model_validator(mode="after")
    def _radius_order(self):
        if self.min_radius_frac > self.max_radius_frac:
            raise ValueError("data.synth.min_radius_frac must be <= data.synth.max_radius_frac")
        return self


class DataConfig(_Section):
    root: str = Field("data/circles", description="dataset folder, s3:// prefix, HF dataset id or save_to_disk folder")
    image_column: str = "image"
    conditioning_image_column: str = "conditioning_image"
    caption_column: str = "text"
    id_column: Optional[str] = Field(
        None, description="row id column; default: an 'id' key when rows have one, else the image path, else the row index"
    )
    min_size: int = Field(16, ge=1, description="smallest accepted image side")
    max_size: int = Field(8192, ge=1, description="largest accepted image side")
    max_pixels: int = Field(
        64_000_000, ge=1, description="images whose header claims more pixels are refused (decompression bombs)"
    )
    resize_policy: Literal["strict", "resize"] = Field(
        "strict", description="strict: image and condition sizes must agree; resize: condition is resized to the image"
    )
    max_bad_fraction: float = Field(0.0, ge=0.0, le=1.0, description="validate fails above this share of bad rows")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1")
        if self.min_size > self.max_size:
            raise ValueError("data.min_size must be <= data.max_size")
        return self


class ModelConfig(_Section):
    base_model: str = Field(
        "models/toy-base", description="hub id, local diffusers folder or s3:// prefix"
    )
    revision: Optional[str] = None
    variant: Optional[str] = Field(None, description="weights variant, e.g. fp16")
    vae: Optional[str] = Field(None, description="VAE override (hub id, folder or s3://), e.g. madebyollin/sdxl-vae-fp16-fix")
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    adapter_type: Literal["auto", "full_adapter", "light_adapter", "full_adapter_xl"] = "auto"
    adapter_channels: Optional[list[int]] = Field(None, description="default: derived from the UNet")
    num_res_blocks: int = Field(2, ge=1, le=8)
    pretrained_adapter: Optional[str] = Field(None, description="start from this adapter (folder, hub id, s3://)")
    local_files_only: bool = Field(False, description="never reach the hub")


class ToyBaseConfig(_Section):
    resolution: int = Field(64, ge=16, le=512)
    vae_steps: int = Field(1200, ge=1)
    unet_steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    num_samples: int = Field(4000, ge=16, description="synthetic training images")
    seed: int = Field(0, ge=0)
    vae_lr: float = Field(2e-3, gt=0, le=1.0, description="VAE learning rate (AdamW)")
    vae_batch_size: int = Field(8, ge=1, description="VAE batch (batch_size is the UNet's)")
    vae_kl_weight: float = Field(1e-4, ge=0, description="weight of the per-element KL term in the VAE loss")
    vae_edge_weight: float = Field(
        1.0, ge=0, description="weight of the image-gradient L1 term in the VAE loss (sharp disc edges, no border frame)"
    )
    warmup_steps: int = Field(50, ge=0, description="UNet learning-rate warm-up steps (then cosine decay to 10%)")
    ema_decay: float = Field(0.995, gt=0, lt=1, description="EMA decay of the UNet and text-encoder weights")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of captions dropped for classifier-free guidance")
    eval_samples: int = Field(64, ge=1, description="generated images scored by the colour check")
    eval_steps: int = Field(20, ge=1, le=1000, description="sampler steps for the colour check")
    guidance_scale: float = Field(4.0, ge=0, description="classifier-free guidance for the colour check")
    num_threads: int = Field(2, ge=1, le=256, description="torch CPU threads")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device: cpu, cuda or cuda:N")


class EncodeConfig(_Section):
    resolution: int = Field(64, ge=16, le=4096)
    random_crop: bool = False
    random_flip: bool = False
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(1024, ge=1, description="samples per safetensors shard")
    splits: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["train", "val"], description="splits to encode; val feeds validation during training"
    )
    latents: Literal["sample", "mean"] = Field(
        "sample",
        description="sample: cache the VAE posterior (mean + logvar) and draw a fresh latent every step, "
        "as encoding every step does; mean: cache the posterior mean only (half the size)",
    )
    storage_dtype: Literal["fp32", "fp16", "bf16"] = Field("fp16", description="dtype of cached latents and text embeddings")
    seed: int = Field(0, ge=0, description="seed of the random crops (one fixed crop per sample)")


class TrainConfig(_Section):
    lr: float = Field(1e-3, gt=0, le=1.0, description="AdamW learning rate; 1e-3 suits the toy default, the "
                      "SDXL/SD1.5 presets use 1e-5")
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    batch_size: int = Field(8, ge=1, description="global batch per optimizer micro-step across all ranks")
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    timestep_sampling: Literal["cubic", "uniform"] = "cubic"
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    snr_gamma: Optional[float] = Field(None, gt=0, description="min-SNR weighting gamma; off when unset")
    conditioning_scale: float = Field(1.0, ge=0)
    caption_dropout: float = Field(0.0, ge=0, le=1)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    ema_decay: Optional[float] = Field(None, gt=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_last: int = Field(2, ge=1)
    validate_every: int = Field(0, ge=0, description="0 disables validation during training")
    max_bad_steps: int = Field(5, ge=1, description="consecutive non-finite losses before aborting")
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    deepspeed_config: Optional[str] = Field(None, description="user DeepSpeed JSON, validated against this config")
    seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    shuffle_window: int = Field(4, ge=1, description="cache shards whose samples are shuffled together (the "
                                "epoch order shuffles shards, then samples within each window of shards)")
    stream: Literal["auto", "always", "never"] = Field(
        "auto", description="stream cache shards on demand instead of downloading the whole cache first "
        "(auto: when the cache is on s3://)")
    stream_disk_gb: float = Field(50.0, gt=0, description="local disk a streamed cache may fill; used shards "
                                  "are evicted beyond it")
    stream_prefetch: int = Field(8, ge=0, description="micro-batches whose shards are fetched ahead")
    log_every: int = Field(10, ge=1, description="optimizer steps between metric log lines")
    validation_samples: int = Field(4, ge=1, le=64, description="val-split samples drawn during validation")
    validation_inference_steps: int = Field(20, ge=1, le=1000)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        # YAML reads an unquoted `no` (e.g. -S train.mixed_precision=no) as False.
        return "no" if value is False else value


class GateConfig(_Section):
    min_fidelity_lift: Optional[float] = Field(None, description="minimum lift of the primary fidelity metric")
    max_fid: Optional[float] = Field(None, gt=0)
    max_kid: Optional[float] = Field(None, description="maximum KID (with adapter)")
    min_circle_iou: Optional[float] = Field(None, ge=0, le=1)


class EvaluateConfig(_Section):
    split: Literal["train", "val", "test"] = "test"
    num_samples: int = Field(64, ge=1)
    num_inference_steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(5.0, ge=0)
    negative_prompt: str = ""
    scheduler: Literal["default", "ddim", "euler", "dpmsolver"] = "default"
    batch_size: int = Field(16, ge=1)
    conditioning_scales: list[float] = Field(default_factory=lambda: [1.0])
    conditioning_factor: float = Field(1.0, ge=0, le=1, description="SDXL adapter_conditioning_factor")
    condition_kind: Literal["circle_outline", "canny", "sketch", "lineart", "depth", "segmentation"] = "circle_outline"
    fid: Literal["required", "optional", "off"] = "optional"
    inception_weights: Optional[str] = Field(None, description="local file, s3:// URI or https URL of pt_inception weights")
    clip_model: Optional[str] = Field(None, description="CLIP weights for CLIP score (folder, hub id, s3://)")
    seed: int = Field(1234, ge=0)
    resolution: Optional[int] = Field(None, ge=16, le=4096, description="generated image side; default encode.resolution")
    estimator: Optional[str] = Field(
        None, description="package.module:function returning the depth/segmentation/lineart estimator"
    )
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets")
    kid_subset_size: int = Field(1000, ge=2, description="KID: subset size (capped at the number of images)")
    grid_rows: int = Field(8, ge=1, le=64, description="samples shown in the report grid")
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("fid", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` / `on` (e.g. -S evaluate.fid=off) as a boolean.
        return {False: "off", True: "required"}.get(value, value) if isinstance(value, bool) else value


class ExportConfig(_Section):
    opset: int = Field(17, ge=13, le=23)
    resolutions: list[int] = Field(default_factory=lambda: [64], description="profile sizes (square)")
    max_batch: int = Field(4, ge=1)
    fp16: bool = True
    fp32_tolerance: float = Field(1e-4, gt=0)
    fp16_tolerance: float = Field(1e-2, gt=0)
    parity_resolutions: Optional[list[int]] = Field(
        None,
        description="square sizes of the onnxruntime vs PyTorch check (plus one wider case); "
        "default: export.resolutions; each a multiple of the adapter's total downscale factor",
    )
    pipeline_check: Literal["auto", "required", "skip"] = Field(
        "auto",
        description="end-to-end check: the base model's adapter pipeline with ONNX vs PyTorch residuals, "
        "same seed; auto skips it (saying why) when the base model is not a local diffusers folder",
    )
    pipeline_steps: int = Field(2, ge=1, le=50, description="denoising steps of the end-to-end check")
    pipeline_tolerance: float = Field(
        1e-3, gt=0, description="largest pixel difference ([0, 1] scale) allowed in the end-to-end check"
    )
    require_tensorrt_ready: bool = Field(
        False, description="fail the export when the TensorRT 10 operator audit or an engine build finds a problem"
    )


class RegistryConfig(_Section):
    """How ``t2iops registry compare`` and ``t2iops retrain`` choose between the champion and a
    challenger (docs/operations.md, "Reading a decision")."""

    primary_metric: str = Field(
        "auto", min_length=1,
        description="metric the challenger must improve; auto: the first fidelity metric of evaluate.condition_kind",
    )
    value: Literal["with_adapter", "lift"] = Field(
        "with_adapter", description="which number of each fidelity metric is compared (FID/KID: always with_adapter)"
    )
    margin: float = Field(
        0.01, ge=0, description="the primary metric must beat the champion's by at least this (absolute, in its "
        "better direction); a tie never replaces the champion",
    )
    tolerance: float = Field(
        0.05, ge=0, description="any other metric may be worse than the champion's by at most this fraction of it"
    )
    tolerances: dict[str, float] = Field(
        default_factory=dict, description="per-metric absolute tolerances replacing `tolerance`, e.g. {fid: 5.0}"
    )


class _Serialised:
    """What a full configuration and a stage's view share: YAML, the file written next to a
    stage's outputs, and a stable hash for cache keys, all from ``to_dict()``."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, directory: str | Path, name: str = "config.resolved.yaml") -> Path:
        """Write the resolved config next to a stage's outputs."""
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the named sections (all when none), for cache keys."""
        import hashlib

        data = self.to_dict()
        if sections:
            data = {s: _get_path(data, s) for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class Config(_Serialised, _Section):
    """The whole configuration. ``params.yaml`` holds any subset of it."""

    seed: int = Field(0, ge=0)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    toy_base: ToyBaseConfig = Field(default_factory=ToyBaseConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")



# ---------------------------------------------------------------------------------------
def _get_path(data: dict, dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def _format_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        kind = e["type"]
        msg = e["msg"]
        if kind == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif kind == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"invalid value {e.get('input')!r}; allowed values: {e['ctx']['expected']}"
        elif "input" in e and kind != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{key}: {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return sorted(model.model_fields)
        model = field.annotation
    return sorted(model.model_fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-5`` -> (["train", "lr"], 1e-5). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for path, value in items:
        if isinstance(path, str):
            path = path.split(".")
        cur = data
        for i, part in enumerate(path[:-1]):
            nxt = cur.get(part)
            if nxt is None:
                nxt = cur[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            cur = nxt
        cur[path[-1]] = value
    return data


def load_config(
    params: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load ``params.yaml`` (or nothing: the embedded default), apply ``key=value`` overrides,
    validate. Raises :class:`ConfigError` naming the key on any problem."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if params is not None:
        path = Path(params)
        if not path.exists():
            raise ConfigError(f"params file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"params file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"params file {path} must hold a mapping at the top level")
        data = loaded
        origin = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        origin += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


def config_from_dict(data: dict[str, Any], origin: str = "dict") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


# ---------------------------------------------------------------------------------------
# What each stage reads. A stage receives a view of the resolved config restricted to these
# dotted paths (a section, a sub-section or one key) plus the runtime sections; reading
# anything else raises ConfigError naming the stage and the key. dvc.yaml's `params:` lists
# exactly these paths (tests/unit/test_stage_sections.py checks it) and each KFP step receives
# exactly these values, so a stage re-runs (DVC) or misses the cache (KFP) only when what it
# reads changed. Cross-section reads are declared here on purpose, with the reason beside them.
RUNTIME_SECTIONS = ("storage",)  # where data lives and how to reach it, not what a stage computes
ALL_SECTIONS = "*"
# the synthetic rows are written under the configured column names
_SYNTH = ("data.synth", "data.image_column", "data.conditioning_image_column", "data.caption_column", "data.id_column")
# validate, encode and evaluate read rows through the one dataset reader (columns, limits, split)
_DATASET = (
    "data.root", "data.image_column", "data.conditioning_image_column", "data.caption_column", "data.id_column",
    "data.min_size", "data.max_size", "data.max_pixels", "data.resize_policy", "data.max_bad_fraction",
    "data.val_fraction", "data.test_fraction",
)
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": _SYNTH,
    # pull (KFP only) synthesizes the circles when data_source is 'synth'
    "pull": _SYNTH,
    "validate": _DATASET,
    # the toy base learns the synthetic circles; model.base_model is its default output folder
    "toy_base": ("toy_base", "data.synth", "model.base_model"),
    "encode": (*_DATASET, "model", "encode"),
    # validation during training samples like the evaluation does (same fidelity metric, seeds, CFG)
    "train": ("model", "train", "evaluate.condition_kind", "evaluate.seed", "evaluate.guidance_scale"),
    # evaluate.resolution defaults to the resolution the adapter was trained (encoded) at
    "evaluate": (*_DATASET, "model", "encode.resolution", "evaluate"),
    # the parity check draws synthetic circle conditions (seed, data.synth); the serving manifest
    # records the generation settings the evaluation used and the training data root
    "export": (
        "seed", "data.root", "data.synth", "model", "train.conditioning_scale", "evaluate.guidance_scale",
        "evaluate.conditioning_scales", "evaluate.conditioning_factor", "export",
    ),
    # the registry keeps the whole resolved configuration beside the published model
    "publish": (ALL_SECTIONS,),
}


def stage_paths(stage: str) -> tuple[str, ...]:
    """The dotted paths ``stage`` declares (without the runtime sections)."""
    try:
        return STAGE_SECTIONS[stage]
    except KeyError:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_SECTIONS)}") from None


def covered(path: str, allowed: tuple[str, ...]) -> bool:
    """Whether the dotted ``path`` lies in one of the ``allowed`` paths."""
    return any(a == ALL_SECTIONS or path == a or path.startswith(a + ".") for a in allowed)


def _partly_covered(path: str, allowed: tuple[str, ...]) -> bool:
    return any(a.startswith(path + ".") for a in allowed)


def restrict_dict(data: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """The part of a nested config dict that ``allowed`` (dotted paths) covers."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if covered(path, allowed):
            out[key] = value
        elif isinstance(value, dict) and _partly_covered(path, allowed):
            out[key] = restrict_dict(value, allowed, path + ".")
    return out


class StageConfig(_Serialised):
    """A read-only view of a :class:`Config` holding only what one stage declares in
    :data:`STAGE_SECTIONS` (plus the runtime sections). A declared section or key reads as
    usual (the real pydantic object); anything else raises :class:`ConfigError` naming the
    stage and the key, so a stage cannot silently depend on another stage's settings."""

    def __init__(self, cfg: Config | BaseModel, stage: str, allowed: tuple[str, ...] | None = None, prefix: str = ""):
        if allowed is None:
            allowed = stage_paths(stage) + RUNTIME_SECTIONS
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_prefix", prefix)

    @property
    def stage(self) -> str:
        return self._stage

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        path = f"{self._prefix}{name}"
        value = getattr(self._cfg, name)
        if covered(path, self._allowed):
            return value
        if isinstance(value, BaseModel) and _partly_covered(path, self._allowed):
            return StageConfig(value, self._stage, self._allowed, path + ".")
        declared = ", ".join(p for p in self._allowed if p not in RUNTIME_SECTIONS) or "nothing"
        raise ConfigError(
            f"stage {self._stage!r} reads {path}, which it does not declare (it declares: {declared}); "
            "add it to STAGE_SECTIONS in t2iops/config.py and to the stage's params in dvc.yaml, "
            "or take the value from the stage's input artifact"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(f"stage {self._stage!r}: the configuration is read-only here (set {self._prefix}{name} with -S)")

    def __repr__(self) -> str:
        return f"StageConfig({self._stage!r}, {self.to_dict()!r})"

    # -- the same serialisation as Config, of the declared part only ---------------------
    def to_dict(self) -> dict[str, Any]:
        data = self._cfg.model_dump(mode="json")
        return restrict_dict(data, self._allowed, self._prefix)



def stage_config(cfg: Config, stage: str) -> StageConfig:
    """The view of ``cfg`` that ``stage`` may read."""
    return StageConfig(cfg, stage)


def stage_values(cfg: Config, stage: str) -> dict[str, Any]:
    """The resolved values ``stage`` reads (declared paths + runtime sections), as a nested dict."""
    return stage_config(cfg, stage).to_dict()


def dvc_params(stage: str) -> list[str]:
    """What ``dvc.yaml`` lists under the stage's ``params:``: its declared paths. The runtime
    sections are left out: an S3 endpoint or retry count does not change a result."""
    return list(stage_paths(stage))
