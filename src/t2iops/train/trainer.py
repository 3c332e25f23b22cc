"""``t2iops train``: train a T2I-Adapter on a frozen base model from the encode cache.

Read :func:`_train` top to bottom: set up (cache, checkpoint to resume, the frozen base model
from the reference the cache records, adapter, optimizer), then :func:`_loop` over optimizer
steps (:func:`_optimizer_step`: micro-batches, loss, backward, update, EMA; then log, validate,
checkpoint), then the result (``summary.json`` and the adapter, published). Over 400 lines on
purpose: the whole run stays readable in one file, as a torchtune recipe does. Everything else lives in small
modules next to this one: ``data`` (order + per-sample randomness), ``diffusion`` (the
objective), ``optimization`` (torch or DeepSpeed ZeRO), ``checkpoint``, ``validation``,
``metrics``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .. import storage
from ..config import Config
from ..errors import ModelError, T2IError, UsageError
from ..encode.cache import CacheReader
from . import checkpoint as ckpt
from .data import train_loader
from .streaming import open_cache
from .diffusion import Objective, adapter_loss
from .distributed import DistInfo, init_distributed
from .metrics import RunLogger, format_postfix, peak_memory
from .preflight import check_training_config, learning_rate, uses_deepspeed
from .run_lock import hold_run_lock

log = logging.getLogger("t2iops.train")


class TrainingAborted(T2IError):
    """Training stopped (too many consecutive non-finite losses); the last checkpoint is intact."""


@dataclass
class TrainState:
    """Everything about the run's progress that a checkpoint restores (besides weights,
    optimizer state and RNG states)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: the next micro-batch is (epoch, batch)
    batch: int = 0
    skipped_steps: int = 0
    bad_streak: int = 0
    samples_seen: int = 0
    losses: list = field(default_factory=list)  # mean loss of every optimizer step (None when skipped)
    validation: list = field(default_factory=list)  # {"step", "val_loss", <fidelity>}


def train(cache_dir: str, out: str, cfg: Config, resume: Optional[str] = None) -> str:
    """Train an adapter from the cache at ``cache_dir``; write checkpoints and the final
    ``adapter/``, ``summary.json`` and ``config.resolved.yaml`` to ``out`` (folder or s3://).
    ``resume``: ``"latest"`` (start fresh when there is none), ``"auto"`` (``latest`` when it was
    written for the same run specification, else a fresh run that removes ``out``'s checkpoints)
    or a checkpoint path/URI. One run at a time may write ``out`` (a lock held by rank 0)."""
    dist = init_distributed(use_deepspeed=uses_deepspeed(cfg))
    ds_config = None
    if uses_deepspeed(cfg):
        from .deepspeed_config import deepspeed_config

        ds_config = deepspeed_config(cfg.train, dist.world_size, cfg.storage)
    zero_stage = int(ds_config["zero_optimization"]["stage"]) if ds_config else 0
    check_training_config(cfg, dist.world_size, dist.device, zero_stage=zero_stage)
    with hold_run_lock(out, dist):
        return _train(cache_dir, out, cfg, resume, dist, ds_config, zero_stage)


def _train(cache_dir: str, out: str, cfg: Config, resume: Optional[str],
           dist: DistInfo, ds_config: Optional[dict], zero_stage: int) -> str:
    t = cfg.train
    data = _open_data(cache_dir, cfg, dist, zero_stage)
    start = _starting_point(out, cfg, resume, dist, data.cache.root)
    frozen = _load_frozen(cache_dir, cfg, dist, data)
    trainee = _build_trainee(cfg, dist, ds_config, frozen, data.reader)

    state = TrainState()
    if start.resumed_from:
        state = _restore(start.verified, trainee.opt, trainee.ema, dist)
        log.info("resumed from %s at step %d", start.resumed_from, state.step)
    elif dist.is_main and storage.exists(storage.join(out, storage.MANIFEST), cfg.storage):
        storage.delete(storage.join(out, storage.MANIFEST), cfg.storage)  # a new run: withdraw the old result
    dist.barrier()

    validator = _validator(cfg, dist, frozen, data.val_reader)
    logger = RunLogger(out, dist.is_main, t.max_steps, state.step, resumed=bool(start.resumed_from),
                       storage_cfg=cfg.storage)
    batches = iter(train_loader(data.reader, t, dist.rank, dist.world_size, start=(state.epoch, state.batch),
                                fetcher=data.cache.fetcher))
    if dist.is_main:
        log.info("training %s adapter (%.1f M parameters) on %s for %d steps: %d samples/step over %d rank(s), "
                 "%s, %s", trainee.config["adapter_type"], trainee.parameters / 1e6, frozen.family, t.max_steps,
                 t.batch_size * t.grad_accum, dist.world_size, t.mixed_precision,
                 f"ZeRO-{zero_stage}" if ds_config else "torch AdamW")
    if t.validate_every and state.step == 0:
        _validate(validator, trainee.opt, trainee.ema, state, logger, out, cfg)

    timing = _loop(state, batches, data.reader, frozen, trainee, dist, cfg, start, validator, logger, out)

    weights = _export_weights(trainee.opt, trainee.ema)
    if dist.is_main:
        summary = _summary(state, timing, data.reader, frozen, trainee, dist, cfg, start, ds_config, zero_stage)
        _publish_result(out, weights, trainee.config, summary, cfg)
        logger.close()
    dist.barrier()
    return out


# ---------------------------------------------------------------------------------------
# Setting up, in the order _train does it
@dataclass
class _Data:
    cache: object  # an opened cache (whole, or streamed shard by shard: train.stream)
    reader: CacheReader
    val_reader: Optional[CacheReader]


@dataclass
class _Start:
    checkpoints: ckpt.Checkpointer
    spec: str  # the run specification a checkpoint must match to be resumed by --resume auto
    resumed_from: Optional[str]
    verified: Optional[ckpt.VerifiedCheckpoint]


@dataclass
class _Frozen:
    """The base model's frozen parts, loaded from the reference the cache records."""

    base: object  # t2iops.models.resolve.BaseModel
    unet: torch.nn.Module
    objective: Objective
    family: str
    compute_dtype: torch.dtype


@dataclass
class _Trainee:
    """The adapter (the only thing that trains), its optimizer and EMA."""

    config: dict
    parameters: int
    opt: object
    ema: object = None


@dataclass
class _Timing:
    train_time: float = 0.0
    timed_steps: int = 0
    first_step: int = 0

    def samples_per_s(self, samples_per_step: int) -> Optional[float]:
        return samples_per_step * self.timed_steps / self.train_time if self.train_time else None


def _open_data(cache_dir: str, cfg: Config, dist: DistInfo, zero_stage: int) -> _Data:
    cache = open_cache(cache_dir, cfg, dist.rank)
    reader = CacheReader(cache.root, "train")
    val_count = len(reader.index["samples"].get("val", {}).get("ids", []))
    check_training_config(cfg, dist.world_size, dist.device, zero_stage, len(reader), val_count)
    val_reader = CacheReader(cache.root, "val") if cfg.train.validate_every else None
    if val_reader is not None:
        cache.fetch_split(val_reader)
    return _Data(cache, reader, val_reader)


def _starting_point(out: str, cfg: Config, resume: Optional[str], dist: DistInfo, cache_root) -> _Start:
    """Where the run starts: a verified checkpoint to resume, or nothing (a new run)."""
    checkpoints = ckpt.Checkpointer(out, dist, cfg.storage, cfg.train.keep_last)
    spec = ckpt.run_spec(cfg, cache_root)
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
    return _Start(checkpoints, spec, resumed_from, verified)


def _load_frozen(cache_dir: str, cfg: Config, dist: DistInfo, data: _Data) -> _Frozen:
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
    return _Frozen(base, unet, objective, family, compute_dtype)


def _build_trainee(cfg: Config, dist: DistInfo, ds_config: Optional[dict], frozen: _Frozen,
                   reader: CacheReader) -> _Trainee:
    from ..models.family import build_adapter, check_adapter_fits

    t = cfg.train
    torch.manual_seed(t.seed)  # same initial weights on every rank
    adapter = build_adapter(frozen.base, cfg.model)  # new, or model.pretrained_adapter
    check_adapter_fits(adapter, frozen.base, resolution=reader.index["resolution"])
    adapter = adapter.to(dist.device, torch.float32).train().requires_grad_(True)
    adapter_config = dict(adapter.config)
    parameters = sum(p.numel() for p in adapter.parameters())  # before ZeRO-3 partitions them
    if ds_config is not None:
        from .optimization import DeepSpeedOptimization

        opt = DeepSpeedOptimization(adapter, t, dist, ds_config)
    else:
        from .optimization import PlainOptimization

        opt = PlainOptimization(adapter, t, dist)
    ema = None
    if t.ema_decay is not None:
        from .ema import EMA

        ema = EMA(_raw_module(opt), t.ema_decay)
    return _Trainee(adapter_config, parameters, opt, ema)


def _validator(cfg: Config, dist: DistInfo, frozen: _Frozen, val_reader: Optional[CacheReader]):
    """Rank 0's validator (None elsewhere, or without train.validate_every)."""
    if val_reader is None or not dist.is_main:
        return None
    from .validation import Validator

    vae = frozen.base.vae.to(dist.device, frozen.compute_dtype).eval().requires_grad_(False)
    return Validator(val_reader, cfg, frozen.unet, vae, dict(frozen.base.scheduler.config), frozen.objective,
                     dist.device, frozen.compute_dtype)


# ---------------------------------------------------------------------------------------
# The loop
def _loop(state: TrainState, batches, reader: CacheReader, frozen: _Frozen, trainee: _Trainee, dist: DistInfo,
          cfg: Config, start: _Start, validator, logger: RunLogger, out: str) -> _Timing:
    """Optimizer steps until train.max_steps: step, log, validate, checkpoint."""
    t = cfg.train
    timing = _Timing(first_step=state.step)
    last_saved = state.step if start.resumed_from else -1
    samples_per_step = t.batch_size * t.grad_accum
    while state.step < t.max_steps:
        started = time.perf_counter()
        lr = learning_rate(state.step, t)
        bad, grad_norm = _optimizer_step(state, batches, reader, frozen, trainee, dist, t, lr)
        if bad and state.bad_streak >= t.max_bad_steps:
            logger.close()
            _abort(state, start.checkpoints, t)
        timing.train_time += time.perf_counter() - started
        timing.timed_steps += 1

        samples_per_s = timing.samples_per_s(samples_per_step)
        if dist.is_main:
            logger.progress(1, format_postfix(state.losses[-1], lr, samples_per_s))
            if state.step % t.log_every == 0 or state.step == t.max_steps or bad:
                logger.scalars(state.step, {
                    "loss": state.losses[-1], "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples_per_s,
                    "peak_memory_gb": peak_memory(dist.device)["bytes"] / 2**30,
                    "skipped_steps": state.skipped_steps})
        if t.validate_every and state.step % t.validate_every == 0:
            _validate(validator, trainee.opt, trainee.ema, state, logger, out, cfg)
        if state.step % t.checkpoint_every == 0 or state.step == t.max_steps:
            _save(start.checkpoints, state, trainee.opt, trainee.ema, trainee.config, dist, cfg, reader, start.spec)
            last_saved = state.step
            logger.sync()
    if last_saved != state.step:
        _save(start.checkpoints, state, trainee.opt, trainee.ema, trainee.config, dist, cfg, reader, start.spec)
    return timing


def _optimizer_step(state: TrainState, batches, reader: CacheReader, frozen: _Frozen, trainee: _Trainee,
                    dist: DistInfo, t, lr: float) -> tuple[bool, Optional[float]]:
    """train.grad_accum micro-batches, backward, update, EMA; returns (bad, grad norm). A bad
    step (a non-finite loss on any rank) is skipped by every rank."""
    opt = trainee.opt
    for group in opt.param_groups:
        group["lr"] = lr
    autocast = dict(device_type=dist.device.type, dtype=frozen.compute_dtype, enabled=t.mixed_precision != "no")
    loss_sum, bad = 0.0, False
    for _ in range(t.grad_accum):
        batch = next(batches)
        state.epoch, state.batch = _next_position(batch["epoch"], batch["batch"], reader, t.batch_size)
        batch = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(**autocast):
            loss = adapter_loss(frozen.unet, opt.module, batch, frozen.objective, frozen.compute_dtype).mean()
        # Every rank must agree that the micro-batch is good before anyone back-propagates.
        verdict = dist.all_reduce_sum(torch.stack([
            torch.where(torch.isfinite(loss), loss.detach().float(), torch.zeros((), device=loss.device)),
            (~torch.isfinite(loss)).float()]))
        bad |= bool(verdict[1] > 0)
        loss_sum += float(verdict[0]) / dist.world_size
        opt.backward(loss, bad=bad)
    applied, grad_norm = opt.step(bad)
    state.step += 1
    state.samples_seen += t.batch_size * t.grad_accum
    if bad or not applied:
        state.skipped_steps += 1
    if bad:
        state.bad_streak += 1
        state.losses.append(None)
    else:
        state.bad_streak = 0
        state.losses.append(loss_sum / t.grad_accum)
    if applied and trainee.ema is not None:
        trainee.ema.update(_raw_module(opt))
    return bad, grad_norm


def _abort(state: TrainState, checkpoints: ckpt.Checkpointer, t) -> None:
    last = checkpoints.list_complete()
    raise TrainingAborted(
        f"{state.bad_streak} consecutive steps had a non-finite loss (last at step {state.step}; "
        f"train.max_bad_steps={t.max_bad_steps}); nothing after the last checkpoint was saved "
        f"({storage.join(checkpoints.root, last[-1]) if last else 'no checkpoint yet'}). "
        "Lower train.lr, use bf16 instead of fp16, or check the cache for broken samples")


# ---------------------------------------------------------------------------------------
# The result
def _summary(state: TrainState, timing: _Timing, reader: CacheReader, frozen: _Frozen, trainee: _Trainee,
             dist: DistInfo, cfg: Config, start: _Start, ds_config: Optional[dict], zero_stage: int) -> dict:
    """``summary.json``: what the run did, on what data, from which base model (the reference it
    loaded, which is the cache's), with which adapter."""
    t = cfg.train
    return {
        "steps": state.step,
        "steps_this_run": state.step - timing.first_step,
        "samples_seen": state.samples_seen,
        "final_loss": next((x for x in reversed(state.losses) if x is not None), None),
        "losses": state.losses,
        "validation": state.validation,
        "samples_per_s": timing.samples_per_s(t.batch_size * t.grad_accum),
        "peak_memory": peak_memory(dist.device),
        "skipped_steps": state.skipped_steps,
        "world_size": dist.world_size,
        "optimizer": f"deepspeed-zero{zero_stage}" if ds_config else "torch-adamw",
        "mixed_precision": t.mixed_precision,
        "ema": t.ema_decay is not None,
        "resumed_from": start.resumed_from,
        "data_version": reader.index["dataset_version"],
        "cache": {"text": reader.index["text"]["key"], "latents": reader.index["latents"]["key"]},
        "base_model": frozen.base.ref.to_dict(),
        "family": frozen.family,
        "adapter": trainee.config,
    }


# ---------------------------------------------------------------------------------------
def _raw_module(opt) -> torch.nn.Module:
    return opt.engine.module if hasattr(opt, "engine") else opt.module


def _next_position(epoch: int, batch: int, reader: CacheReader, global_batch: int) -> tuple[int, int]:
    batch += 1
    if batch == len(reader) // global_batch:
        return epoch + 1, 0
    return epoch, batch


def _export_weights(opt, ema) -> dict[str, torch.Tensor]:
    """Collective: the weights to ship (EMA when on), gathered whole."""
    full = opt.full_state_dict()
    return ema.weights(full) if ema is not None else full


def _adapter_from(weights: dict, adapter_config: dict):
    from diffusers import T2IAdapter

    adapter = T2IAdapter.from_config(adapter_config)
    adapter.load_state_dict(weights)
    return adapter


def _validate(validator, opt, ema, state: TrainState, logger: RunLogger, out: str, cfg: Config) -> None:
    """Collective (the weights are gathered on every rank); rank 0, which holds the validator,
    does the work."""
    weights = _export_weights(opt, ema)
    if validator is None:
        return
    # In the compute dtype, as the pipeline feeds its residuals straight into the UNet.
    adapter = _adapter_from(weights, dict(_raw_module(opt).config)).to(validator.device, validator.compute_dtype)
    metrics, grid = validator.run(adapter)
    state.validation.append({"step": state.step, **metrics})
    logger.scalars(state.step, metrics, prefix="val")
    logger.image(state.step, "val/grid", grid)
    if logger.enabled:
        import io

        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        storage.write_bytes(storage.join(out, "validation", f"step-{state.step:06d}.png"), buf.getvalue(), cfg.storage)
        log.info("validation at step %d: %s", state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def _save(checkpoints, state: TrainState, opt, ema, adapter_config: dict, dist: DistInfo, cfg: Config,
          reader: CacheReader, spec: str) -> None:
    from safetensors.torch import save_file

    full = opt.full_state_dict()  # collective under ZeRO
    shipped = ema.weights(full) if ema is not None else full

    def write(folder: Path) -> None:
        state_dir = folder / "state"
        (state_dir / "rng").mkdir(parents=True, exist_ok=True)
        ckpt.save_rng_state(state_dir / "rng" / f"rank-{dist.rank:05d}.safetensors")
        opt.save(state_dir)
        if not dist.is_main:
            return
        _adapter_from(shipped, adapter_config).save_pretrained(str(folder / "adapter"))
        save_file(full, str(state_dir / "adapter.safetensors"))
        if ema is not None:
            save_file(ema.state_dict()["shadow"], str(state_dir / "ema.safetensors"))
        trainer = {**asdict(state), "ema_updates": ema.updates if ema is not None else None,
                   "world_size": dist.world_size, "optimizer": opt.name,
                   "lr": learning_rate(max(0, state.step - 1), cfg.train),
                   "data_version": reader.index["dataset_version"]}
        (state_dir / "trainer.json").write_text(json.dumps(trainer))
        cfg.write(folder)

    checkpoints.save(state.step, write, extra={"data_version": reader.index["dataset_version"], "run_spec": spec})


def _restore(checkpoint: ckpt.VerifiedCheckpoint, opt, ema, dist: DistInfo) -> TrainState:
    """Load a verified checkpoint: JSON and safetensors, and the optimizer's pickles with
    ``weights_only=True``."""
    from safetensors.torch import load_file

    folder = checkpoint.folder
    trainer = json.loads(checkpoint.path("state/trainer.json").read_text())
    if trainer["optimizer"] != opt.name:
        raise ModelError(f"checkpoint {folder} was written by the {trainer['optimizer']} optimizer path, this run "
                         f"uses {opt.name} (train.zero_stage / train.deepspeed_config changed)")
    if opt.name == "deepspeed":
        if trainer["world_size"] != dist.world_size:
            raise ModelError(f"checkpoint {folder} holds ZeRO partitions for {trainer['world_size']} ranks; "
                             f"resume it with {trainer['world_size']} processes (this run has {dist.world_size})")
        opt.load(checkpoint)
    else:
        opt.load_weights(load_file(str(checkpoint.path("state/adapter.safetensors")), device=str(dist.device)))
        opt.load(checkpoint)
    if ema is not None:
        if not checkpoint.has("state/ema.safetensors"):
            raise ModelError(f"checkpoint {folder} has no EMA weights but train.ema_decay is set")
        ema.load_state_dict({"shadow": load_file(str(checkpoint.path("state/ema.safetensors"))),
                             "updates": trainer["ema_updates"]})
    rng = f"state/rng/rank-{dist.rank:05d}"
    if checkpoint.has(f"{rng}.safetensors"):
        ckpt.load_rng_state(checkpoint.path(f"{rng}.safetensors"))
    elif checkpoint.has(f"{rng}.pt"):  # written before RNG states were safetensors: never unpickled
        log.warning("checkpoint %s keeps its RNG states as a pickle (%s.pt), which is not loaded; the resumed run "
                    "draws different random numbers than an uninterrupted one would", folder, rng)
    fields = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in trainer.items() if k in fields})


def _publish_result(out: str, weights: dict, adapter_config: dict, summary: dict, cfg: Config) -> None:
    """O/adapter/, O/summary.json, O/config.resolved.yaml, then O/_manifest.json last.
    (Not storage.publish: that replaces the whole folder, and O also holds the checkpoints.)"""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="t2iops-result-") as tmp:
        staging = Path(tmp)
        _adapter_from(weights, adapter_config).save_pretrained(str(staging / "adapter"))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        cfg.write(staging)
        files = ckpt.file_entries(staging)
        if storage.is_s3(out):
            storage.delete(storage.join(out, "adapter"), cfg.storage)
            storage.upload_dir(staging, out, cfg.storage)
        else:
            dest = Path(out)
            dest.mkdir(parents=True, exist_ok=True)
            if (dest / "adapter").exists():
                import shutil

                shutil.rmtree(dest / "adapter")
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = dest / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                storage.write_bytes(target, path.read_bytes())
        storage.write_bytes(storage.join(out, storage.MANIFEST),
                            ckpt.manifest_bytes(files, {"kind": "t2iops-adapter", "steps": summary["steps"],
                                                   "data_version": summary["data_version"]}), cfg.storage)


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
