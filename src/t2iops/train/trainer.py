"""``t2iops train``: train a T2I-Adapter on a frozen base model from the encode cache.

The run is one object, :class:`TrainRecipe`, which holds everything it needs (the configuration,
the process group, the cache, the frozen base model, the adapter with its optimizer and
learning-rate schedule, the EMA, the logger, the step counters) and reads top to bottom:

* :meth:`~TrainRecipe.setup`: the cache, the checkpoint to continue (:meth:`~TrainRecipe.resume`),
  the frozen base model from the reference the cache records, the adapter, its optimizer and
  schedule;
* :meth:`~TrainRecipe.train`: optimizer steps (micro-batches, loss, backward, update, EMA), each
  logged, with validation and checkpoints (:meth:`~TrainRecipe.save`) on their schedules;
* :meth:`~TrainRecipe.finish`: ``summary.json`` and the adapter, published.

The parts live in small modules next to this one: ``inputs`` (cache, starting point, base
model), ``data`` (order, one bucket per micro-batch, per-sample randomness), ``diffusion`` (the
objective), ``optimization`` (torch or DeepSpeed ZeRO, and the schedule), ``state`` (the counters
a checkpoint restores), ``checkpoint``, ``validation``, ``metrics`` and ``result``.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from .. import storage
from ..config import Config
from ..errors import ModelError, T2IError
from . import checkpoint as ckpt
from .data import EpochBatches, train_loader
from .diffusion import adapter_loss
from .distributed import init_distributed
from .ema import EMA
from .inputs import load_frozen, new_adapter, open_data, starting_point, validator_for
from .metrics import RunLogger, bucket_line, format_postfix, peak_memory
from .optimization import build_optimization
from .preflight import check_training_config, uses_deepspeed
from .result import adapter_from, export_weights, publish_result
from .run_lock import hold_run_lock
from .state import Timing, TrainState

log = logging.getLogger("t2iops.train")


class TrainingAborted(T2IError):
    """Training stopped (too many consecutive non-finite losses); the last checkpoint is intact."""


def train(cache_dir: str, out: str, cfg: Config, resume: Optional[str] = None) -> str:
    """Train an adapter from the cache at ``cache_dir``; write checkpoints and the final
    ``adapter/``, ``summary.json`` and ``config.resolved.yaml`` to ``out`` (folder or s3://).
    ``resume``: ``"latest"`` (start fresh when there is none), ``"auto"`` (``latest`` when it was
    written for the same run specification, else a fresh run that removes ``out``'s checkpoints)
    or a checkpoint path/URI. One run at a time may write ``out`` (a lock held by rank 0)."""
    return TrainRecipe(cache_dir, out, cfg, resume).run()


class TrainRecipe:
    """One training run and all of its state. Joining the process group and checking the
    configuration happen on construction, before anything large is loaded."""

    def __init__(self, cache_dir: str, out: str, cfg: Config, resume: Optional[str] = None):
        self.cache_dir, self.out, self.cfg, self.resume_request = cache_dir, out, cfg, resume
        self.t = cfg.train
        self.dist = init_distributed(use_deepspeed=uses_deepspeed(cfg))
        self.ds_config = None
        if uses_deepspeed(cfg):
            from .deepspeed_config import deepspeed_config

            self.ds_config = deepspeed_config(cfg.train, self.dist.world_size, cfg.storage)
        self.zero_stage = int(self.ds_config["zero_optimization"]["stage"]) if self.ds_config else 0
        check_training_config(cfg, self.dist.world_size, self.dist.device, zero_stage=self.zero_stage)
        self.samples_per_step = self.t.batch_size * self.t.grad_accum
        self.state = TrainState()
        self.timing = Timing()
        # Set by setup():
        self.data = self.start = self.frozen = None  # inputs.TrainData, StartPoint, FrozenBase
        self.epochs: Optional[EpochBatches] = None  # every epoch's micro-batches, each of one bucket
        self.opt = self.ema = None  # optimization.PlainOptimization | DeepSpeedOptimization, ema.EMA
        self.adapter_config: dict = {}
        self.parameters = 0
        self.validator = self.logger = self.batches = None

    def run(self) -> str:
        """Set up, train, publish the result, holding the run folder's lock throughout."""
        with hold_run_lock(self.out, self.dist):
            self.setup()
            self.train()
            self.finish()
        return self.out

    # -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """The cache, the starting point, the frozen base model, the adapter with its optimizer
        and schedule; then the progress a checkpoint holds, the validator, the logger, and the
        data stream from where the run stands."""
        dist, t = self.dist, self.t
        self.data = open_data(self.cache_dir, self.cfg, dist, self.zero_stage)
        self.epochs = EpochBatches(self.data.reader, t.batch_size, t.seed, t.shuffle_window)  # checks the sizes
        self.start = starting_point(self.out, self.cfg, self.resume_request, dist, self.data.cache.root)
        self.frozen = load_frozen(self.cache_dir, self.cfg, dist, self.data)
        adapter = new_adapter(self.cfg, dist, self.frozen, self.data.reader.index["resolution"])
        self.adapter_config = dict(adapter.config)
        self.parameters = sum(p.numel() for p in adapter.parameters())  # before ZeRO-3 partitions them
        self.opt = build_optimization(adapter, t, dist, self.ds_config)
        self.ema = EMA(self.opt.adapter, t.ema_decay) if t.ema_decay is not None else None
        if self.start.resumed_from:
            self.resume()
        elif dist.is_main and storage.exists(storage.join(self.out, storage.MANIFEST), self.cfg.storage):
            # A new run: withdraw the old result.
            storage.delete(storage.join(self.out, storage.MANIFEST), self.cfg.storage)
        dist.barrier()

        self.validator = validator_for(self.cfg, dist, self.frozen, self.data.val_reader)
        self.logger = RunLogger(self.out, dist.is_main, t.max_steps, self.state.step,
                                resumed=bool(self.start.resumed_from), storage_cfg=self.cfg.storage)
        self.batches = iter(train_loader(self.data.reader, t, dist.rank, dist.world_size,
                                         start=(self.state.epoch, self.state.batch), fetcher=self.data.cache.fetcher,
                                         batches=self.epochs))
        if dist.is_main:
            log.info("training %s adapter (%.1f M parameters) on %s for %d steps: %d samples/step over %d rank(s), "
                     "%s, %s", self.adapter_config["adapter_type"], self.parameters / 1e6, self.frozen.family,
                     t.max_steps, self.samples_per_step, dist.world_size, t.mixed_precision,
                     f"ZeRO-{self.zero_stage}" if self.ds_config else "torch AdamW")
            self._log_buckets()

    def _log_buckets(self) -> None:
        """One plain line per bucket: its samples and its share of the run's optimizer steps (a
        step of train.grad_accum micro-batches may mix buckets, so a share can be fractional)."""
        t = self.t
        end = self.epochs.position_after(t.max_steps * t.grad_accum)
        for row in self.epochs.report(end):
            never = row["samples"] and not row["micro_batches_per_epoch"]  # samples that are never trained on
            log.log(logging.WARNING if never else logging.INFO, "%s",
                    bucket_line(row, t.batch_size, t.grad_accum, t.max_steps))

    def resume(self) -> None:
        """Continue from the verified checkpoint: JSON and safetensors, and the optimizer's
        pickles with ``weights_only=True``."""
        from safetensors.torch import load_file

        checkpoint, opt, dist = self.start.verified, self.opt, self.dist
        folder = checkpoint.folder
        saved = json.loads(checkpoint.path("state/trainer.json").read_text())
        if saved["optimizer"] != opt.name:
            raise ModelError(f"checkpoint {folder} was written by the {saved['optimizer']} optimizer path, this run "
                             f"uses {opt.name} (train.zero_stage / train.deepspeed_config changed)")
        if opt.name == "deepspeed" and saved["world_size"] != dist.world_size:
            raise ModelError(f"checkpoint {folder} holds ZeRO partitions for {saved['world_size']} ranks; "
                             f"resume it with {saved['world_size']} processes (this run has {dist.world_size})")
        if opt.name != "deepspeed":
            opt.load_weights(load_file(str(checkpoint.path("state/adapter.safetensors")), device=str(dist.device)))
        opt.load(checkpoint)
        if self.ema is not None:
            if not checkpoint.has("state/ema.safetensors"):
                raise ModelError(f"checkpoint {folder} has no EMA weights but train.ema_decay is set")
            self.ema.load_state_dict({"shadow": load_file(str(checkpoint.path("state/ema.safetensors"))),
                                      "updates": saved["ema_updates"]})
        rng = f"state/rng/rank-{dist.rank:05d}"
        if checkpoint.has(f"{rng}.safetensors"):
            ckpt.load_rng_state(checkpoint.path(f"{rng}.safetensors"))
        elif checkpoint.has(f"{rng}.pt"):  # written before RNG states were safetensors: never unpickled
            log.warning("checkpoint %s keeps its RNG states as a pickle (%s.pt), which is not loaded; the resumed run "
                        "draws different random numbers than an uninterrupted one would", folder, rng)
        self.state = TrainState.from_saved(saved)
        log.info("resumed from %s at step %d", self.start.resumed_from, self.state.step)

    # -----------------------------------------------------------------------------------
    def train(self) -> None:
        """Optimizer steps until train.max_steps: step, log, validate, checkpoint."""
        t, state = self.t, self.state
        if t.validate_every and state.step == 0:
            self.validate()
        self.timing = Timing(first_step=state.step)
        last_saved = state.step if self.start.resumed_from else -1
        while state.step < t.max_steps:
            started = time.perf_counter()
            lr = self.opt.apply_schedule(state.step)
            bad, grad_norm = self._optimizer_step()
            if bad and state.bad_streak >= t.max_bad_steps:
                self.logger.close()
                self._abort()
            self.timing.add(time.perf_counter() - started)
            self._log_step(lr, grad_norm, bad)
            if t.validate_every and state.step % t.validate_every == 0:
                self.validate()
            if state.step % t.checkpoint_every == 0 or state.step == t.max_steps:
                self.save()
                last_saved = state.step
                self.logger.sync()
        if last_saved != state.step:
            self.save()

    def _optimizer_step(self) -> tuple[bool, Optional[float]]:
        """train.grad_accum micro-batches, backward, update, EMA; returns (bad, grad norm). A bad
        step (a non-finite loss on any rank) is skipped by every rank."""
        t, dist, frozen, opt = self.t, self.dist, self.frozen, self.opt
        batches_per_epoch = self.epochs.batches_per_epoch
        autocast = dict(device_type=dist.device.type, dtype=frozen.compute_dtype, enabled=t.mixed_precision != "no")
        loss_sum, bad = 0.0, False
        for _ in range(t.grad_accum):
            batch = next(self.batches)
            self.state.move_past(batch["epoch"], batch["batch"], batches_per_epoch)
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
        self.state.count_step(self.samples_per_step, None if bad else loss_sum / t.grad_accum, applied)
        if applied and self.ema is not None:
            self.ema.update(opt.adapter)
        return bad, grad_norm

    def _log_step(self, lr: float, grad_norm: Optional[float], bad: bool) -> None:
        state, t = self.state, self.t
        samples_per_s = self.timing.samples_per_s(self.samples_per_step)
        if not self.dist.is_main:
            return
        self.logger.progress(1, format_postfix(state.losses[-1], lr, samples_per_s))
        if state.step % t.log_every == 0 or state.step == t.max_steps or bad:
            self.logger.scalars(state.step, {
                "loss": state.losses[-1], "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples_per_s,
                "peak_memory_gb": peak_memory(self.dist.device)["bytes"] / 2**30,
                "skipped_steps": state.skipped_steps})

    def _abort(self) -> None:
        checkpoints = self.start.checkpoints
        last = checkpoints.list_complete()
        raise TrainingAborted(
            f"{self.state.bad_streak} consecutive steps had a non-finite loss (last at step {self.state.step}; "
            f"train.max_bad_steps={self.t.max_bad_steps}); nothing after the last checkpoint was saved "
            f"({storage.join(checkpoints.root, last[-1]) if last else 'no checkpoint yet'}). "
            "Lower train.lr, use bf16 instead of fp16, or check the cache for broken samples")

    def validate(self) -> None:
        """Collective (the weights are gathered on every rank); rank 0, which holds the validator,
        does the work."""
        weights = export_weights(self.opt, self.ema)
        if self.validator is None:
            return
        step, validator = self.state.step, self.validator
        # In the compute dtype, as the pipeline feeds its residuals straight into the UNet.
        adapter = adapter_from(weights, dict(self.opt.adapter.config)).to(validator.device, validator.compute_dtype)
        metrics, grid = validator.run(adapter)
        self.state.validation.append({"step": step, **metrics})
        self.logger.scalars(step, metrics, prefix="val")
        self.logger.image(step, "val/grid", grid)
        if self.logger.enabled:
            buf = io.BytesIO()
            grid.save(buf, format="PNG")
            storage.write_bytes(storage.join(self.out, "validation", f"step-{step:06d}.png"), buf.getvalue(),
                                self.cfg.storage)
            log.info("validation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    # -----------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the run (collective): every rank writes its RNG states and its share of the
        optimizer state, rank 0 the weights and the counters; published whole or not at all."""
        full = self.opt.full_state_dict()  # collective under ZeRO
        shipped = self.ema.weights(full) if self.ema is not None else full
        self.start.checkpoints.save(self.state.step, lambda folder: self._write_checkpoint(folder, full, shipped),
                                    extra={"data_version": self.data.reader.index["dataset_version"],
                                           "run_spec": self.start.spec})

    def _write_checkpoint(self, folder: Path, full: dict, shipped: dict) -> None:
        from safetensors.torch import save_file

        state, opt, ema, dist = self.state, self.opt, self.ema, self.dist
        state_dir = folder / "state"
        (state_dir / "rng").mkdir(parents=True, exist_ok=True)
        ckpt.save_rng_state(state_dir / "rng" / f"rank-{dist.rank:05d}.safetensors")
        opt.save(state_dir)
        if not dist.is_main:
            return
        adapter_from(shipped, self.adapter_config).save_pretrained(str(folder / "adapter"))
        save_file(full, str(state_dir / "adapter.safetensors"))
        if ema is not None:
            save_file(ema.state_dict()["shadow"], str(state_dir / "ema.safetensors"))
        trainer = {**asdict(state), "ema_updates": ema.updates if ema is not None else None,
                   "world_size": dist.world_size, "optimizer": opt.name,
                   "lr": opt.schedule(max(0, state.step - 1)),  # the rate of the last step taken
                   "data_version": self.data.reader.index["dataset_version"]}
        (state_dir / "trainer.json").write_text(json.dumps(trainer))
        self.cfg.write(folder)

    # -----------------------------------------------------------------------------------
    def finish(self) -> None:
        """The weights to ship, gathered (collective); rank 0 publishes them with
        ``summary.json``."""
        weights = export_weights(self.opt, self.ema)
        if self.dist.is_main:
            publish_result(self.out, weights, self.adapter_config, self.summary(), self.cfg)
            self.logger.close()
        self.dist.barrier()

    def summary(self) -> dict:
        """``summary.json``: what the run did, on what data, from which base model (the reference it
        loaded, which is the cache's), with which adapter."""
        state, t, index = self.state, self.t, self.data.reader.index
        return {
            "steps": state.step,
            "steps_this_run": state.step - self.timing.first_step,
            "samples_seen": state.samples_seen,
            "final_loss": state.final_loss,
            "losses": state.losses,
            "validation": state.validation,
            "samples_per_s": self.timing.samples_per_s(self.samples_per_step),
            "peak_memory": peak_memory(self.dist.device),
            "skipped_steps": state.skipped_steps,
            "world_size": self.dist.world_size,
            "optimizer": f"deepspeed-zero{self.zero_stage}" if self.ds_config else "torch-adamw",
            "mixed_precision": t.mixed_precision,
            "ema": t.ema_decay is not None,
            "resumed_from": self.start.resumed_from,
            "data_version": index["dataset_version"],
            "buckets": self.bucket_summary(),
            "cache": {"text": index["text"]["key"], "latents": index["latents"]["key"]},
            "base_model": self.frozen.base.ref.to_dict(),
            "family": self.frozen.family,
            "adapter": self.adapter_config,
        }

    def bucket_summary(self) -> list[dict]:
        """Per bucket: its samples in the train split, its micro-batches and left-out samples per
        epoch, and the samples the run has trained on from it so far."""
        rows = self.epochs.report((self.state.epoch, self.state.batch))
        return [{**{k: v for k, v in row.items() if k != "micro_batches"},
                 "samples_seen": row["micro_batches"] * self.t.batch_size} for row in rows]
