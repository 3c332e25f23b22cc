"""What a training run starts from: the cache, the checkpoint it continues, the frozen base model.

Each is opened by one function here, in the order :meth:`~.trainer.TrainRecipe.setup` calls
them: the cache first (its sizes are checked against the configuration before anything large
loads), then the starting point (a checkpoint verified file by file, or none), then the base
model the cache was encoded with.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import Config
from ..encode.cache import CacheReader
from ..errors import ModelError, UsageError
from . import checkpoint as ckpt
from .diffusion import Objective
from .distributed import DistInfo
from .preflight import check_training_config
from .streaming import open_cache

log = logging.getLogger("t2iops.train")


@dataclass
class TrainData:
    cache: object  # an opened cache (whole, or streamed shard by shard: train.stream)
    reader: CacheReader
    val_reader: Optional[CacheReader]


@dataclass
class StartPoint:
    checkpoints: ckpt.Checkpointer
    spec: str  # the run specification a checkpoint must match to be resumed by --resume auto
    resumed_from: Optional[str]
    verified: Optional[ckpt.VerifiedCheckpoint]


@dataclass
class FrozenBase:
    """The base model's frozen parts, loaded from the reference the cache records."""

    base: object  # t2iops.models.resolve.BaseModel
    unet: torch.nn.Module
    objective: Objective
    family: str
    compute_dtype: torch.dtype


def open_data(cache_dir: str, cfg: Config, dist: DistInfo, zero_stage: int) -> TrainData:
    cache = open_cache(cache_dir, cfg, dist.rank)
    reader = CacheReader(cache.root, "train")
    val_count = len(reader.index["samples"].get("val", {}).get("ids", []))
    check_training_config(cfg, dist.world_size, dist.device, zero_stage, len(reader), val_count)
    val_reader = CacheReader(cache.root, "val") if cfg.train.validate_every else None
    if val_reader is not None:
        cache.fetch_split(val_reader)
    return TrainData(cache, reader, val_reader)


def starting_point(out: str, cfg: Config, resume: Optional[str], dist: DistInfo, cache_root) -> StartPoint:
    """Where the run starts: a verified checkpoint to resume, or nothing (a new run)."""
    checkpoints = ckpt.Checkpointer(out, dist, cfg.storage, cfg.train.keep_last)
    spec = ckpt.run_fingerprint(cfg, cache_root)
    resumed_from = checkpoints.resolve(resume) if resume else None
    if resumed_from and resume in ("latest", "auto"):
        resumed_from = checkpoints.same_run_or_fresh(resumed_from, spec, resume)
    if resume and resumed_from is None:
        log.info("--resume %s: no checkpoint under %s yet; starting a new run", resume, checkpoints.root)
    if not resume and checkpoints.list_complete():
        # Mixing two runs' checkpoints would make `latest` and pruning lie.
        raise UsageError(f"{checkpoints.root} already holds checkpoints of another run; continue it with "
                         "--resume latest, or train into a new --out")
    # Every file checked against the sha256 recorded at save time before anything is read.
    verified = ckpt.verify(checkpoints.materialize(resumed_from)) if resumed_from else None
    return StartPoint(checkpoints, spec, resumed_from, verified)


def load_frozen(cache_dir: str, cfg: Config, dist: DistInfo, data: TrainData) -> FrozenBase:
    """The base model the cache was encoded with (read from the cache; model.* may only agree
    with it), in the compute dtype of train.mixed_precision."""
    from diffusers import DDPMScheduler

    from ..devices import torch_dtype
    from ..encode.cache import INDEX
    from ..models.family import detect_family
    from ..models.reference import reference_from_record
    from ..models.resolve import load_base_model

    t, reader = cfg.train, data.reader
    compute_dtype = torch_dtype(t.mixed_precision)
    components = ("unet", "scheduler") + (("vae",) if data.val_reader else ())
    ref = reference_from_record(reader.index.get("base_model"), cfg.model, f"cache {cache_dir} ({INDEX})")
    base = load_base_model(ref, cfg.storage, components=components, local_files_only=cfg.model.local_files_only)
    family = detect_family(base.unet.config)
    if family != reader.family:
        raise ModelError(f"the cache at {cache_dir} was encoded for a {reader.family} model but "
                         f"its base model {ref.path} loads as {family}; encode again")
    unet = base.unet.to(dist.device, compute_dtype).eval().requires_grad_(False)
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    scheduler = DDPMScheduler.from_config(base.scheduler.config)  # the training noise schedule
    objective = Objective.from_scheduler(scheduler, t, reader.scaling_factor, reader.shift_factor, dist.device)
    return FrozenBase(base, unet, objective, family, compute_dtype)


def new_adapter(cfg: Config, dist: DistInfo, frozen: FrozenBase, resolution: int) -> torch.nn.Module:
    """The adapter to train (new, or model.pretrained_adapter), fp32, with the same initial
    weights on every rank."""
    from ..models.family import build_adapter, check_adapter_fits

    torch.manual_seed(cfg.train.seed)
    adapter = build_adapter(frozen.base, cfg.model)
    check_adapter_fits(adapter, frozen.base, resolution=resolution)
    return adapter.to(dist.device, torch.float32).train().requires_grad_(True)


def validator_for(cfg: Config, dist: DistInfo, frozen: FrozenBase, val_reader: Optional[CacheReader]):
    """Rank 0's validator (None elsewhere, or without train.validate_every)."""
    if val_reader is None or not dist.is_main:
        return None
    from .validation import Validator

    vae = frozen.base.vae.to(dist.device, frozen.compute_dtype).eval().requires_grad_(False)
    return Validator(val_reader, cfg, frozen.unet, vae, dict(frozen.base.scheduler.config), frozen.objective,
                     dist.device, frozen.compute_dtype)
