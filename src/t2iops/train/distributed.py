"""Process-group setup and the few collectives the trainer uses.

Launch with ``torchrun --nproc_per_node N -m t2iops.cli train ...`` or ``deepspeed`` (both set
RANK / WORLD_SIZE / LOCAL_RANK); a plain ``t2iops train`` is one process. On GPUs the backend
is NCCL, on CPUs gloo (DeepSpeed picks its CPU accelerator there).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ..devices import default_device
from ..ports import free_port


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return torch_dist.is_available() and torch_dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active and self.world_size > 1:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj) -> list:
        if not (self.active and self.world_size > 1):
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not (self.active and self.world_size > 1):
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]



def init_distributed(use_deepspeed: bool) -> DistInfo:
    """Join the process group the launcher set up (or make a one-process group when DeepSpeed
    runs without a launcher: its engine always needs one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if (world_size > 1 or use_deepspeed) and not torch_dist.is_initialized():
        if world_size == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if use_deepspeed:
            import deepspeed

            if device.type == "cpu":
                skip_cpu_inference_allreduce_op()
            deepspeed.init_distributed(dist_backend=backend)
        else:
            torch_dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def skip_cpu_inference_allreduce_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce op.

    On the CPU accelerator, ``deepspeed.init_distributed`` JIT-builds ``deepspeed_shm_comm``
    (about a minute of C++ compiling on two cores, and a compiler on every CPU node) for
    ``inference_all_reduce``, which only tensor-parallel inference calls; ZeRO training reduces
    through the process group (gloo here). ``deepspeed.ops.__compatible_ops__`` is what it asks
    first, and nothing else reads it (DeepSpeed 0.19; the version is pinned): marking the op
    unavailable there leaves every collective training uses unchanged."""
    import deepspeed.ops

    # Not probed yet: an empty table (probing every op runs compilers); probed: one entry off.
    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False


def shutdown() -> None:
    """Leave the process group, and forget the sub-groups DeepSpeed cached for it: they die with
    it, and a later run in the same process (a notebook, a sweep, a test worker) must not reuse
    them ("Group ... is not registered")."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        for name, value in list(vars(groups).items()):
            if name.startswith("_") and name.endswith("_GROUP") or name.endswith("_GROUP_RANKS"):
                setattr(groups, name, {} if isinstance(value, dict) else None)
        for name in ("_MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE", "_MPU_TENSOR_MODEL_PARALLEL_RANK", "mpu"):
            if hasattr(groups, name):
                setattr(groups, name, None)
