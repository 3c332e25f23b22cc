"""``t2iops train``: train a T2I-Adapter on a frozen base model from the encode cache.

Read :func:`train` top to bottom: set up (processes, cache, frozen models, adapter, optimizer,
checkpoint to resume), then one loop over optimizer steps -- micro-batches, loss, backward,
update, EMA, log, validate, checkpoint -- then the final export. Everything else lives in small
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
from .metrics import RunLogger, format_postfix, peak_memory, write_kfp_metrics
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


def train(cache_dir: str, out: str, cfg: Config, resume: Optional[str] = None,
          kfp_metrics: Optional[str] = None) -> str:
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
        return _train(cache_dir, out, cfg, resume, kfp_metrics, dist, ds_config, zero_stage)


def _train(cache_dir: str, out: str, cfg: Config, resume: Optional[str], kfp_metrics: Optional[str],
           dist: DistInfo, ds_config: Optional[dict], zero_stage: int) -> str:
    t = cfg.train
    # -- data ------------------------------------------------------------------------------
    cache = open_cache(cache_dir, cfg, dist.rank)  # whole, or streamed shard by shard (train.stream)
    reader = CacheReader(cache.root, "train")
    val_count = len(reader.index["samples"].get("val", {}).get("ids", []))
    check_training_config(cfg, dist.world_size, dist.device, zero_stage, len(reader), val_count)
    val_reader = CacheReader(cache.root, "val") if t.validate_every else None
    if val_reader is not None:
        cache.fetch_split(val_reader)

    # -- where the run starts ---------------------------------------------------------------
    checkpoints = ckpt.Checkpointer(out, dist, cfg.storage, t.keep_last)
    spec = ckpt.run_spec(cfg, cache.root)
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

    # -- frozen base model -------------------------------------------------------------------
    from diffusers import DDPMScheduler

    from ..devices import torch_dtype
    from ..encode.cache import INDEX
    from ..models.family import build_adapter, check_adapter_fits, detect_family
    from ..models.reference import reference_from_record
    from ..models.resolve import load_base_model

    compute_dtype = torch_dtype(t.mixed_precision)
    components = ("unet", "scheduler") + (("vae",) if val_reader else ())
    # The base model the cache was encoded with, read from the cache (model.* may only agree with it).
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

    # -- the adapter: the only thing that trains ----------------------------------------------
    torch.manual_seed(t.seed)  # same initial weights on every rank
    adapter = build_adapter(base, cfg.model)  # new, or model.pretrained_adapter
    check_adapter_fits(adapter, base, resolution=reader.index["resolution"])
    adapter = adapter.to(dist.device, torch.float32).train().requires_grad_(True)
    adapter_config = dict(adapter.config)
    adapter_params = sum(p.numel() for p in adapter.parameters())  # before ZeRO-3 partitions them
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

    # -- resume -----------------------------------------------------------------------------
    state = TrainState()
    if resumed_from:
        state = _restore(verified, opt, ema, dist)
        log.info("resumed from %s at step %d", resumed_from, state.step)
    elif dist.is_main and storage.exists(storage.join(out, storage.MANIFEST), cfg.storage):
        storage.delete(storage.join(out, storage.MANIFEST), cfg.storage)  # a new run: withdraw the old result
    dist.barrier()

    validator = None
    if val_reader is not None and dist.is_main:
        from .validation import Validator

        vae = base.vae.to(dist.device, compute_dtype).eval().requires_grad_(False)
        validator = Validator(val_reader, cfg, unet, vae, dict(base.scheduler.config), objective,
                              dist.device, compute_dtype)
    logger = RunLogger(out, dist.is_main, t.max_steps, state.step, resumed=bool(resumed_from),
                       storage_cfg=cfg.storage)
    batches = iter(train_loader(reader, t, dist.rank, dist.world_size, start=(state.epoch, state.batch),
                                fetcher=cache.fetcher))
    samples_per_step = t.batch_size * t.grad_accum
    if dist.is_main:
        log.info("training %s adapter (%.1f M parameters) on %s for %d steps: %d samples/step over %d rank(s), "
                 "%s, %s", adapter_config["adapter_type"], adapter_params / 1e6,
                 family, t.max_steps, samples_per_step, dist.world_size, t.mixed_precision,
                 f"ZeRO-{zero_stage}" if ds_config else "torch AdamW")
    if t.validate_every and state.step == 0:
        _validate(validator, opt, ema, state, logger, out, cfg)

    # -- the loop ---------------------------------------------------------------------------
    train_time = 0.0
    timed_steps = 0
    last_saved = state.step if resumed_from else -1
    first_step = state.step
    autocast = dict(device_type=dist.device.type, dtype=compute_dtype, enabled=t.mixed_precision != "no")
    while state.step < t.max_steps:
        started = time.perf_counter()
        lr = learning_rate(state.step, t)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum, bad = 0.0, False
        for _ in range(t.grad_accum):
            batch = next(batches)
            state.epoch, state.batch = _next_position(batch["epoch"], batch["batch"], reader, t.batch_size)
            batch = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with torch.autocast(**autocast):
                loss = adapter_loss(unet, opt.module, batch, objective, compute_dtype).mean()
            # Every rank must agree that the micro-batch is good before anyone back-propagates.
            verdict = dist.all_reduce_sum(torch.stack([
                torch.where(torch.isfinite(loss), loss.detach().float(), torch.zeros((), device=loss.device)),
                (~torch.isfinite(loss)).float()]))
            micro_bad = bool(verdict[1] > 0)
            bad |= micro_bad
            loss_sum += float(verdict[0]) / dist.world_size
            opt.backward(loss, bad=bad)
        applied, grad_norm = opt.step(bad)
        state.step += 1
        state.samples_seen += samples_per_step
        if bad or not applied:
            state.skipped_steps += 1
        if bad:
            state.bad_streak += 1
            state.losses.append(None)
            if state.bad_streak >= t.max_bad_steps:
                logger.close()
                last = checkpoints.list_complete()
                raise TrainingAborted(
                    f"{state.bad_streak} consecutive steps had a non-finite loss (last at step {state.step}; "
                    f"train.max_bad_steps={t.max_bad_steps}); nothing after the last checkpoint was saved "
                    f"({storage.join(checkpoints.root, last[-1]) if last else 'no checkpoint yet'}). "
                    "Lower train.lr, use bf16 instead of fp16, or check the cache for broken samples")
        else:
            state.bad_streak = 0
            state.losses.append(loss_sum / t.grad_accum)
        if applied and ema is not None:
            ema.update(_raw_module(opt))
        step_time = time.perf_counter() - started
        train_time += step_time
        timed_steps += 1

        # -- log, validate, checkpoint --------------------------------------------------------
        samples_per_s = samples_per_step * timed_steps / train_time
        if dist.is_main:
            logger.progress(1, format_postfix(state.losses[-1], lr, samples_per_s))
            if state.step % t.log_every == 0 or state.step == t.max_steps or bad:
                logger.scalars(state.step, {
                    "loss": state.losses[-1], "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples_per_s,
                    "peak_memory_gb": peak_memory(dist.device)["bytes"] / 2**30,
                    "skipped_steps": state.skipped_steps})
        if t.validate_every and state.step % t.validate_every == 0:
            _validate(validator, opt, ema, state, logger, out, cfg)
        if state.step % t.checkpoint_every == 0 or state.step == t.max_steps:
            _save(checkpoints, state, opt, ema, adapter_config, dist, cfg, reader, spec)
            last_saved = state.step
            logger.sync()

    # -- the result ---------------------------------------------------------------------------
    if last_saved != state.step:
        _save(checkpoints, state, opt, ema, adapter_config, dist, cfg, reader, spec)
    weights = _export_weights(opt, ema)
    if dist.is_main:
        summary = {
            "steps": state.step,
            "steps_this_run": state.step - first_step,
            "samples_seen": state.samples_seen,
            "final_loss": next((x for x in reversed(state.losses) if x is not None), None),
            "losses": state.losses,
            "validation": state.validation,
            "samples_per_s": samples_per_step * timed_steps / train_time if train_time else None,
            "peak_memory": peak_memory(dist.device),
            "skipped_steps": state.skipped_steps,
            "world_size": dist.world_size,
            "optimizer": f"deepspeed-zero{zero_stage}" if ds_config else "torch-adamw",
            "mixed_precision": t.mixed_precision,
            "ema": t.ema_decay is not None,
            "resumed_from": resumed_from,
            "data_version": reader.index["dataset_version"],
            "cache": {"text": reader.index["text"]["key"], "latents": reader.index["latents"]["key"]},
            "base_model": base.ref.to_dict(),  # what was loaded (the cache's reference)
            "family": family,
            "adapter": adapter_config,
        }
        _publish_result(out, weights, adapter_config, summary, cfg)
        logger.close()
        if kfp_metrics:
            write_kfp_metrics(kfp_metrics, {
                "final_loss": summary["final_loss"], "samples_per_s": summary["samples_per_s"],
                "skipped_steps": state.skipped_steps, "steps": state.step,
                **{k: v for k, v in (state.validation[-1] if state.validation else {}).items() if k != "step"}},
                cfg.storage)
    dist.barrier()
    return out


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
