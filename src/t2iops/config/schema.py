"""The configuration's schema: every section, every key, its type, range and default.

The defaults are a real SDXL run, so that a value nobody set is one a real training would use:
the base model is ``stabilityai/stable-diffusion-xl-base-1.0`` and the model, encode, train and
export sections hold the fill50k recipe of diffusers' ``train_t2i_adapter_sdxl.py`` example
(``presets/sdxl-fill50k-diffusers.yaml`` writes it out, with its sources): fp16 weights, 1024 px, AdamW at 1e-5, batch 1 with 4 accumulation steps (4 samples
per optimizer step), fp16 mixed precision, 15,000 steps, a checkpoint every 500 (the last 3
kept), validation every 100 steps on 2 samples of 30 sampler steps, guidance 5.0 and cubic
timesteps. Two choices differ from that preset on purpose: ``model.adapter_type`` stays ``auto``
(``full_adapter_xl`` on an SDXL base, with channels derived from its UNet: the preset's 320, 640,
1280, 1280), so that ``-S model.base_model=`` an SD1.5 model still gets a fitting adapter; and
the seeds stay 0 (the recipe's 42 is its example command line, not a property of SDXL).

What the recipe does not fix stays generic: ``data.*`` describes no particular dataset (fill50k
is one dataset among many; its preset names it), and ``data.root`` defaults to ``data``, the
folder of a project's own dataset, because no dataset is a sensible default to train SDXL on.
The synthetic circles are written to :data:`SYNTH_ROOT` and the offline toy base model to
:data:`TOY_BASE_MODEL`; the toy preset (``presets/toy.yaml``, the same values as the checkout's
``params.yaml``) points ``data.root`` and ``model.base_model`` at them, with the small CPU
settings the demo's figures were measured with.

Loading (YAML, ``-S`` overrides, error messages) lives in :mod:`t2iops.config.loading`; what
each stage may read in :mod:`t2iops.config.stages`.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .serialise import _Serialised

SDXL_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# The folder `t2iops data synth` writes the synthetic circles to in a project (dvc.yaml's synth
# stage); a data.root equal to it means "the synthetic dataset" (a KFP run synthesizes it again).
SYNTH_ROOT = "data/circles"
# The folder `t2iops toy-base` writes the offline toy base model to in a project (dvc.yaml's
# toy_base stage): a folder on this machine, in no image.
TOY_BASE_MODEL = "models/toy-base"
# The default data.root: a project's own dataset folder.
DATA_ROOT = "data"


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
    """The synthetic circles `t2iops data synth` writes (a fill50k-style dataset: a filled circle
    as the image, its outline as the condition), for a run that needs no dataset to download."""

    count: int = Field(1000, ge=1, le=10_000_000, description="number of samples")
    resolution: int = Field(64, ge=16, le=4096, description="image side in pixels")
    seed: int = Field(0, ge=0)
    min_radius_frac: float = Field(0.15, gt=0, lt=0.5)
    max_radius_frac: float = Field(0.35, gt=0, lt=0.5)
    outline_width: int = Field(2, ge=1, le=32)
    aspect_ratios: list[float] = Field(
        default_factory=lambda: [1.0],
        description="canvas aspect ratios (width / height) drawn in turn; each canvas keeps resolution's pixel area",
    )

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, value):
        if not value or any(not (0.2 <= r <= 5.0) for r in value):
            raise ValueError("give one or more width/height ratios between 0.2 and 5")
        return value

    @model_validator(mode="after")
    def _radius_order(self):
        if self.min_radius_frac > self.max_radius_frac:
            raise ValueError("data.synth.min_radius_frac must be <= data.synth.max_radius_frac")
        return self


class DataConfig(_Section):
    root: str = Field(
        DATA_ROOT, description=f"dataset folder, s3:// prefix, hf://owner/name (a Hugging Face dataset) or save_to_disk folder ({SYNTH_ROOT}: "
        "the synthetic circles `t2iops data synth` writes)"
    )
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
        SDXL_BASE_MODEL, description=f"hub id, local diffusers folder or s3:// prefix ({TOY_BASE_MODEL}: the offline "
        "toy base `t2iops toy-base` builds)"
    )
    revision: Optional[str] = None
    variant: Optional[str] = Field(None, description="weights variant, e.g. fp16")
    vae: Optional[str] = Field(None, description="VAE override (hub id, folder or s3://), e.g. madebyollin/sdxl-vae-fp16-fix")
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp16", description="dtype of the frozen base model's weights")
    adapter_type: Literal["auto", "full_adapter", "light_adapter", "full_adapter_xl"] = Field(
        "auto", description="auto: full_adapter_xl for an SDXL base, full_adapter for SD1.5"
    )
    adapter_channels: Optional[list[int]] = Field(None, description="default: derived from the UNet")
    num_res_blocks: int = Field(2, ge=1, le=8)
    pretrained_adapter: Optional[str] = Field(None, description="start from this adapter (folder, hub id, s3://)")
    local_files_only: bool = Field(False, description="never reach the hub")


class ToyBaseConfig(_Section):
    """How `t2iops toy-base` trains the offline toy base model: small, CPU, from scratch, with
    SDXL's architecture. Only that command reads this section."""

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
    resolution: int = Field(1024, ge=16, le=4096, description="training image side in pixels (SDXL's native 1024)")
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
    buckets: Union[Literal["square", "auto"], list[str]] = Field(
        "auto",
        description="aspect-ratio buckets (t2iops/data/buckets.py): square (one resolution x resolution crop), "
        "auto (SDXL's ~1 MP buckets from 1:2.4 to 2.4:1, scaled to resolution's pixel area) or a list of "
        "HEIGHTxWIDTH; each sample goes to the bucket nearest its aspect ratio",
    )

    @field_validator("buckets")
    @classmethod
    def _bucket_form(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one HEIGHTxWIDTH bucket, or 'square' / 'auto'")
            for item in value:
                if not re.fullmatch(r"\s*[1-9]\d*\s*[xX]\s*[1-9]\d*\s*", str(item)):
                    raise ValueError(f"{item!r} is not a bucket; write HEIGHTxWIDTH, e.g. 832x1216")
        return value


class TrainConfig(_Section):
    lr: float = Field(1e-5, gt=0, le=1.0, description="AdamW learning rate; 1e-5 is the diffusers SDXL recipe's "
                      "(the toy preset's adapter for its small base learns at 1e-3)")
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    batch_size: int = Field(1, ge=1, description="global batch per optimizer micro-step across all ranks")
    grad_accum: int = Field(4, ge=1, description="micro-steps per optimizer step")
    max_steps: int = Field(15000, ge=1, description="optimizer steps")
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    timestep_sampling: Literal["cubic", "uniform"] = "cubic"
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    snr_gamma: Optional[float] = Field(None, gt=0, description="min-SNR weighting gamma; off when unset")
    conditioning_scale: float = Field(1.0, ge=0)
    caption_dropout: float = Field(0.0, ge=0, le=1)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    ema_decay: Optional[float] = Field(None, gt=0, lt=1)
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(3, ge=1, description="checkpoints kept")
    validate_every: int = Field(100, ge=0, description="optimizer steps between validations; 0 disables them")
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
    validation_samples: int = Field(2, ge=1, le=64, description="val-split samples drawn during validation")
    validation_inference_steps: int = Field(30, ge=1, le=1000, description="sampler steps of each validation image")

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
    resolutions: list[int] = Field(default_factory=lambda: [1024], description="profile sizes (square)")
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


class Config(_Serialised, _Section):
    """The whole configuration. ``params.yaml`` holds any subset of it; a key it leaves out
    takes the default above (a real SDXL run)."""

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


def leaf_keys(data: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """The dotted path of every leaf of a nested config dict (default: the schema's), in order.
    An empty mapping (``registry.tolerances: {}``) is a leaf: its value is the empty mapping."""
    data = Config().to_dict() if data is None else data
    keys: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys += leaf_keys(value, path + ".") if isinstance(value, dict) and value else [path]
    return keys
