"""Checkpoints that are complete or absent, and a ``latest`` pointer that never lies.

Layout under the run's output ``O`` (folder or s3:// prefix)::

    O/checkpoints/step-000100/adapter/              the weights to ship (EMA when on), diffusers format
    O/checkpoints/step-000100/state/trainer.json    step, data position, loss history, counters
    O/checkpoints/step-000100/state/adapter.safetensors   training weights (fp32)
    O/checkpoints/step-000100/state/ema.safetensors       EMA weights (when on)
    O/checkpoints/step-000100/state/optimizer.pt  |  state/deepspeed/...   optimizer (per rank with ZeRO)
    O/checkpoints/step-000100/state/rng/rank-00000.pt     python, numpy, torch CPU/CUDA RNG states
    O/checkpoints/step-000100/_manifest.json        written last: no manifest, no checkpoint
    O/checkpoints/latest                            name of the newest complete checkpoint

Locally every rank writes into one hidden staging folder (the output must be on a filesystem all
ranks share, as DeepSpeed requires), rank 0 writes the manifest and renames the folder into
place. On S3 each rank stages privately and uploads its own files; rank 0 writes the manifest
after all uploads. Only then does ``latest`` move, and only then are checkpoints beyond
``train.keep_last`` deleted (oldest first, never the newest).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import storage
from ..errors import UsageError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------
# RNG state
def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
def file_entries(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": storage.sha256_file(p)}
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_bytes(files: dict, extra: dict) -> bytes:
    body = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, **extra}
    return json.dumps(body, indent=2).encode()


class Checkpointer:
    def __init__(self, out: str, dist, storage_cfg: Any = None, keep_last: int = 2):
        self.out = str(out)
        self.root = storage.join(self.out, CHECKPOINTS)
        self.dist = dist
        self.storage_cfg = storage_cfg
        self.keep_last = keep_last

    # -- writing -------------------------------------------------------------------------
    def save(self, step: int, write: Callable[[Path], None], extra: Optional[dict] = None) -> str:
        """Write checkpoint ``step``: ``write(folder)`` is called on every rank and writes that
        rank's files (rank 0 the shared ones). Collective. Returns the checkpoint's URI."""
        name = checkpoint_name(step)
        final = storage.join(self.root, name)
        extra = {"kind": "t2iops-checkpoint", "step": step, **(extra or {})}
        if storage.is_s3(self.out):
            with tempfile.TemporaryDirectory(prefix="t2iops-ckpt-") as tmp:
                staging = Path(tmp)
                write(staging)
                files = file_entries(staging)
                storage.upload_dir(staging, final, self.storage_cfg)
                gathered = self.dist.all_gather_object(files)
            if self.dist.is_main:
                merged: dict = {}
                for part in gathered:
                    merged.update(part)
                storage.write_bytes(storage.join(final, storage.MANIFEST), manifest_bytes(merged, extra), self.storage_cfg)
        else:
            staging_name = self.dist.broadcast_object(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
            staging = Path(self.root) / staging_name
            if self.dist.is_main:
                staging.mkdir(parents=True)
            self.dist.barrier()
            try:
                write(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # never leave half a checkpoint behind
                raise
            self.dist.barrier()
            if self.dist.is_main:
                (staging / storage.MANIFEST).write_bytes(manifest_bytes(file_entries(staging), extra))
                target = Path(final)
                if target.exists():  # a re-run of the same step replaces the old one
                    shutil.rmtree(target)
                os.replace(staging, target)
        if self.dist.is_main:
            storage.write_bytes(storage.join(self.root, LATEST), name.encode(), self.storage_cfg)
            self._prune(keep=name)
        self.dist.barrier()
        return final

    def _prune(self, keep: str) -> None:
        """Delete complete checkpoints beyond the newest ``keep_last``, never ``keep`` (the one
        ``latest`` names)."""
        names = self.list_complete()
        for name in names[:-self.keep_last]:
            if name != keep:
                storage.delete(storage.join(self.root, name), self.storage_cfg)

    def list_complete(self) -> list[str]:
        """Names of complete checkpoints (with a manifest), oldest first."""
        names = set()
        for rel in storage.list_files(self.root, self.storage_cfg):
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == storage.MANIFEST and parts[0].startswith("step-"):
                names.add(parts[0])
        return sorted(names)

    # -- reading -------------------------------------------------------------------------
    def resolve(self, resume: str) -> Optional[str]:
        """The checkpoint URI for ``--resume latest|PATH``; None when ``latest`` finds none."""
        if resume == "latest":
            try:
                name = storage.read_text(storage.join(self.root, LATEST), self.storage_cfg).strip()
            except FileNotFoundError:
                return None
            uri = storage.join(self.root, name)
        else:
            uri = resume
        if not storage.is_published(uri, self.storage_cfg):
            raise UsageError(f"--resume {resume}: {uri} is not a complete checkpoint (no {storage.MANIFEST})")
        return uri

    def materialize(self, uri: str) -> Path:
        return storage.materialize(uri, self.storage_cfg, kind="checkpoints")
