"""How gradients become adapter updates: plain PyTorch or a DeepSpeed ZeRO engine.

Both expose the same five calls the training loop uses -- ``forward`` (the adapter),
``backward(loss, bad)``, ``step()``, ``full_state_dict()`` and ``save``/``load`` -- so the loop
reads the same whichever runs underneath.

The optimizer and its learning-rate schedule are built together, once, by
:func:`optimizer_and_schedule`; the schedule reaches the optimizer in one place,
``apply_schedule`` at the start of every optimizer step.

* :class:`PlainOptimization` (``train.zero_stage: 0``): AdamW on every rank; with several ranks
  the gradients are averaged with one all-reduce per optimizer step (the adapter is small, so
  overlapping the reduction with backward, as DDP does, buys little).
* :class:`DeepSpeedOptimization` (stage 1-3 or a user DeepSpeed JSON): only the *adapter* is
  wrapped by the engine. The frozen UNet stays an ordinary module outside it, so ZeRO
  partitions the adapter's optimizer state (1), gradients (2) and parameters (3) -- never the
  UNet, which has no optimizer state or gradients to partition and is needed whole on every
  rank for the forward pass anyway.

A step with a non-finite loss on any rank is discarded on every rank: the plain path skips the
update; the DeepSpeed path back-propagates a NaN-poisoned loss so that the engine's own overflow
check drops the step (and clears its partitioned gradient buffers) exactly as it does for an
fp16 overflow.
"""
from __future__ import annotations

import contextlib
import copyreg
import enum
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps to ``base`` (train.lr), then constant, linear decay to 0 or cosine decay to 0 over the
    remaining steps of ``total`` (train.max_steps).

    A pure function of the step, counting skipped steps too: a resumed run gets its rate back by
    getting its step back, so a checkpoint holds no schedule state. It is not handed to
    DeepSpeed, whose engine would advance it only on the steps it applies."""

    base: float
    warmup: int
    kind: str  # train.lr_schedule: constant | linear | cosine
    total: int

    @classmethod
    def from_config(cls, train_cfg) -> "LRSchedule":
        return cls(train_cfg.lr, train_cfg.warmup_steps, train_cfg.lr_schedule, train_cfg.max_steps)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.base
        remaining = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / remaining)
        if self.kind == "linear":
            return self.base * (1.0 - progress)
        return self.base * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_and_schedule(params: list, train_cfg, offload: bool = False) -> tuple[torch.optim.Optimizer, LRSchedule]:
    """The adapter's optimizer and its learning-rate schedule, built here and nowhere else.

    AdamW with train.lr as its base rate (the schedule scales from the same value). With the
    optimizer state offloaded to the CPU (ZeRO's offload_optimizer) it is DeepSpeed's CPU Adam in
    AdamW mode, the same update computed where the offloaded state lives: DeepSpeed refuses a
    torch optimizer there."""
    hyper = dict(lr=train_cfg.lr, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2), eps=train_cfg.adam_eps,
                 weight_decay=train_cfg.weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, adamw_mode=True, **hyper)
    else:
        optimizer = torch.optim.AdamW(params, **hyper)
    return optimizer, LRSchedule.from_config(train_cfg)


def build_optimization(adapter: torch.nn.Module, train_cfg, dist, ds_config: dict | None = None):
    """The way the adapter is optimized: a DeepSpeed ZeRO engine when there is a DeepSpeed
    configuration, plain PyTorch otherwise."""
    if ds_config is not None:
        return DeepSpeedOptimization(adapter, train_cfg, dist, ds_config)
    return PlainOptimization(adapter, train_cfg, dist)


class _Scheduled:
    """What both ways of optimizing share: the schedule, applied to the optimizer in one place."""

    schedule: LRSchedule

    def apply_schedule(self, step: int) -> float:
        """Give every parameter group the learning rate of optimizer step ``step``; returns it."""
        lr = self.schedule(step)
        for group in self.param_groups:
            group["lr"] = lr
        return lr


def _tensor_bytes(obj) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (dicts, lists, tensors)."""
    seen: set[int] = set()
    total = 0

    def visit(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if x.device.type == "meta" or x.numel() == 0:
                return
            key = x.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif hasattr(x, "__dict__") and not isinstance(x, torch.nn.Module):  # e.g. gradient buckets
            for v in vars(x).values():
                if isinstance(v, (torch.Tensor, dict, list, tuple)):
                    visit(v)

    visit(obj)
    return total


class PlainOptimization(_Scheduled):
    name = "torch"

    def __init__(self, adapter: torch.nn.Module, train_cfg, dist):
        self.adapter = adapter
        self.train_cfg = train_cfg
        self.dist = dist
        self.params = [p for p in adapter.parameters() if p.requires_grad]
        self.optimizer, self.schedule = optimizer_and_schedule(self.params, train_cfg)
        fp16 = train_cfg.mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler(dist.device.type) if fp16 else None

    @property
    def module(self) -> torch.nn.Module:
        return self.adapter

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def backward(self, loss: torch.Tensor, bad: bool) -> None:
        if bad:  # nothing of this micro-batch may reach the weights; the step is dropped
            return
        loss = loss / self.train_cfg.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, bad: bool) -> tuple[bool, float]:
        """Average gradients over ranks, clip, update. Returns (applied, grad norm)."""
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return False, float("nan")
        if self.dist.world_size > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_reduce_sum(flat).div_(self.dist.world_size)
            offset = 0
            for p, g in zip(self.params, grads):
                p.grad = flat[offset:offset + g.numel()].view_as(g)
                offset += g.numel()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.train_cfg.max_grad_norm or math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(norm):  # finite loss, non-finite gradient: drop the step too
            if self.scaler is not None:
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return False, norm
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
            applied = True
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.adapter.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.adapter.load_state_dict(state)

    def save(self, folder: Path) -> None:
        if self.dist.is_main:
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler is not None else None},
                       folder / "optimizer.pt")

    def load(self, checkpoint, state_dir: str = "state") -> None:
        """Load the optimizer state from a :class:`~.checkpoint.VerifiedCheckpoint`."""
        state = checkpoint.torch_load(f"{state_dir}/optimizer.pt", map_location=self.dist.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds for optimizer state and gradients (benchmarks)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        return {"optimizer_state": _tensor_bytes(self.optimizer.state), "gradients": _tensor_bytes(grads)}


class DeepSpeedOptimization(_Scheduled):
    name = "deepspeed"

    def __init__(self, adapter: torch.nn.Module, train_cfg, dist, ds_config: dict):
        import deepspeed

        self.train_cfg = train_cfg
        self.dist = dist
        self.ds_config = ds_config
        self.stage = int(ds_config["zero_optimization"]["stage"])
        offload = ds_config["zero_optimization"].get("offload_optimizer", {}).get("device", "none") == "cpu"
        optimizer, self.schedule = optimizer_and_schedule([p for p in adapter.parameters() if p.requires_grad],
                                                          train_cfg, offload)
        self.engine, _, _, _ = deepspeed.initialize(model=adapter, optimizer=optimizer, config=ds_config)

    @property
    def module(self):
        return self.engine

    @property
    def adapter(self) -> torch.nn.Module:
        """The adapter itself (its parameters partitioned under ZeRO-3)."""
        return self.engine.module

    @property
    def param_groups(self):
        return self.engine.optimizer.param_groups

    def backward(self, loss: torch.Tensor, bad: bool) -> None:
        # The engine divides by the accumulation steps itself.
        self.engine.backward(loss * float("nan") if bad else loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # counts the micro-step; the update happens at the boundary

    def step(self, bad: bool) -> tuple[bool, float]:
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        if bad and applied:
            raise RuntimeError("DeepSpeed applied a step whose loss was not finite; its overflow check is off "
                               "(bf16.check_grad_overflow=false in the DeepSpeed JSON?)")
        norm = self.engine.get_global_grad_norm()
        return applied, float(norm) if norm is not None else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's fp32 master weights, gathered from the ZeRO partitions. Collective:
        every rank must call it."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, param in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(param)
            out[name] = (full if full is not None else param).detach().float().cpu().clone()
        for name, buf in self.engine.module.named_buffers():
            out[name] = buf.detach().float().cpu().clone()
        return out

    def save(self, folder: Path) -> None:
        """Every rank writes its partition of the optimizer state (collective)."""
        with _enums_by_value():
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load(self, checkpoint, state_dir: str = "state") -> None:
        """Load the engine's state from a :class:`~.checkpoint.VerifiedCheckpoint`: every file
        DeepSpeed asks for must be one the manifest lists and we verified, and is read with
        ``weights_only=True`` (DeepSpeed's own engine unpickles with ``weights_only=False``)."""
        folder = checkpoint.folder / state_dir / "deepspeed"
        own_engine = self.engine.checkpoint_engine
        self.engine.checkpoint_engine = _VerifiedLoads(own_engine, checkpoint)
        try:
            path, _ = self.engine.load_checkpoint(str(folder), tag="state", load_optimizer_states=True,
                                                  load_lr_scheduler_states=False, load_module_strict=True)
        finally:
            self.engine.checkpoint_engine = own_engine
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {folder}")

    # Where DeepSpeed's optimizers (ZeRO-1/2, ZeRO-3, bf16 and fp16 stage 0) keep fp32 master
    # weights and gradient buffers, by attribute name.
    _MASTER = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups",
               "fp32_groups_flat_partition")
    _GRADS = ("averaged_gradients", "fp32_groups_gradients_flat", "fp32_groups_gradient_flat_partition",
              "grads_in_partition", "ipg_buckets")

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds for optimizer state (moments + fp32 master weights) and gradients
        (partitions, buckets, and ``.grad`` of the module's parameters) -- for benchmarks."""
        zero = self.engine.optimizer
        inner = getattr(zero, "optimizer", zero)
        state = {"moments": inner.state}
        state.update({a: getattr(zero, a) for a in self._MASTER if hasattr(zero, a)})
        grads: dict = {a: getattr(zero, a) for a in self._GRADS if hasattr(zero, a)}
        grads["param_grads"] = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return {"optimizer_state": _tensor_bytes(state), "gradients": _tensor_bytes(grads)}


def _deepspeed_data_classes() -> tuple:
    """The plain data classes DeepSpeed's ZeRO optimizer state holds besides tensors and
    containers; ``weights_only`` loading admits these and nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler)


@contextlib.contextmanager
def _enums_by_value() -> Iterator[None]:
    """Pickle DeepSpeed's enum members as ``Class(value)``, as Python >= 3.11.5 does. Python 3.11.0
    to 3.11.4 (Debian 12's 3.11.2, in the image) pickle them as ``getattr(Class, name)``, and a
    ``weights_only`` load rightly refuses ``getattr`` (it reaches any attribute): a checkpoint
    saved there could never be resumed. Registered only while saving."""
    enums = [c for c in _deepspeed_data_classes() if isinstance(c, type) and issubclass(c, enum.Enum)]
    before = {c: copyreg.dispatch_table.get(c) for c in enums}
    for c in enums:
        copyreg.pickle(c, _enum_by_value)
    try:
        yield
    finally:
        for c, reducer in before.items():
            if reducer is None:
                copyreg.dispatch_table.pop(c, None)
            else:
                copyreg.dispatch_table[c] = reducer


def _enum_by_value(member: enum.Enum):
    return type(member), (member.value,)


class _VerifiedLoads:
    """Stands in for DeepSpeed's checkpoint engine while a checkpoint loads: ``load`` reads only
    verified files, with ``weights_only=True``; everything else goes to DeepSpeed's engine."""

    def __init__(self, engine, checkpoint):
        self._engine = engine
        self._checkpoint = checkpoint

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def load(self, path, map_location=None):
        # DeepSpeed's paths are relative to the working directory when the checkpoint's is.
        return self._checkpoint.torch_load(os.path.abspath(path), map_location=map_location,
                                           safe_globals=_deepspeed_data_classes())
