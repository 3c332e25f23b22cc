"""Checkpoints that are complete or absent, and a ``latest`` pointer that never lies.

Layout under the run's output ``O`` (folder or s3:// prefix)::

    O/checkpoints/step-000100/adapter/              the weights to ship (EMA when on), diffusers format
    O/checkpoints/step-000100/state/trainer.json    step, data position, loss history, counters
    O/checkpoints/step-000100/state/adapter.safetensors   training weights (fp32)
    O/checkpoints/step-000100/state/ema.safetensors       EMA weights (when on)
    O/checkpoints/step-000100/state/optimizer.pt  |  state/deepspeed/...   optimizer (per rank with ZeRO)
    O/checkpoints/step-000100/state/rng/rank-00000.safetensors   python, numpy, torch CPU/CUDA RNG states
    O/checkpoints/step-000100/_manifest.json        written last: size + sha256 of every file, the run spec
    O/checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is published like every other output, by :func:`t2iops.storage.publishing.publish_shared`
with the ranks as its group: locally every rank writes into one hidden staging folder (the
output must be on a filesystem all ranks share, as DeepSpeed requires) that rank 0 renames into
place with its manifest; on S3 each rank uploads its own files under one new version and rank 0
writes the manifest after all uploads. Only then does ``latest`` move, and only then are
checkpoints beyond ``train.keep_last`` deleted (oldest first, never the newest).

Nothing read back from a checkpoint runs code. Our own state is safetensors and JSON (RNG states
included). Before a resume reads anything, :func:`verify` checks every file against the sizes and
sha256 that the manifest recorded at save time and refuses any file it does not list; the few
pickles that remain (torch's optimizer state, DeepSpeed's files) are then read with
``torch.load(weights_only=True)``, which builds tensors and plain containers and never calls
code named by the file. A file changed after the save is refused by name before it is opened.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import storage
from ..errors import ModelError, UsageError
from ..storage.publishing import publish_shared

log = logging.getLogger("t2iops.train")

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_NAME = re.compile(r"^step-(\d+)$")


class CheckpointRefused(ModelError):
    """A checkpoint file does not match what its manifest recorded at save time (changed, planted,
    missing or unlisted), or is not plain tensor data; nothing of it was loaded."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------
# RNG state: safetensors tensors + JSON scalars in the file's metadata, never a pickle
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


def save_rng_state(path: Path) -> None:
    from safetensors.torch import save_file

    state = rng_state()
    py_version, py_words, py_gauss = state["python"]
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    tensors = {"python": torch.tensor(py_words, dtype=torch.int64),
               "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
               "torch": state["torch"]}
    for i, cuda in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = cuda
    scalars = {"python_version": py_version, "python_gauss": py_gauss, "numpy_kind": np_kind,
               "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss)}
    save_file(tensors, str(path), metadata={"rng": json.dumps(scalars)})


def load_rng_state(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        scalars = json.loads(f.metadata()["rng"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    set_rng_state({
        "python": (scalars["python_version"], tuple(int(x) for x in tensors["python"].tolist()),
                   scalars["python_gauss"]),
        "numpy": (scalars["numpy_kind"], tensors["numpy"].numpy().astype(np.uint32), scalars["numpy_pos"],
                  scalars["numpy_has_gauss"], scalars["numpy_gauss"]),
        "torch": tensors["torch"],
        **({"cuda": cuda} if cuda else {}),
    })


# ---------------------------------------------------------------------------------------
# Verifying a checkpoint before anything of it is read
class VerifiedCheckpoint:
    """A local checkpoint folder whose files matched its manifest. ``path(rel)`` hands out a file
    only if the manifest lists it and it is unchanged since it was hashed."""

    def __init__(self, folder: Path, manifest: dict, stats: dict[str, tuple[int, int]]):
        self.folder = folder
        self.manifest = manifest
        self._stats = stats  # rel -> (bytes, mtime_ns) when verified

    def path(self, rel: str | os.PathLike) -> Path:
        target = Path(rel) if Path(rel).is_absolute() else self.folder / rel
        try:
            key = target.resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            raise CheckpointRefused(f"checkpoint {self.folder}: {target} lies outside the checkpoint") from None
        if key not in self._stats:
            raise CheckpointRefused(f"checkpoint {self.folder}: {key} is not listed in its {storage.MANIFEST}; "
                                    "refusing to load a file the save did not write")
        st = target.stat()
        if (st.st_size, st.st_mtime_ns) != self._stats[key]:
            raise CheckpointRefused(f"checkpoint {self.folder}: {key} changed after it was verified")
        return target

    def has(self, rel: str) -> bool:
        return rel in self._stats

    def torch_load(self, rel: str | os.PathLike, map_location=None, safe_globals: tuple = ()) -> Any:
        """``torch.load(weights_only=True)`` of a verified file: tensors and plain containers only
        (plus the data-only classes in ``safe_globals``); a file naming anything else is refused."""
        path = self.path(rel)
        try:
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            # torch's message ends with advice; the line that names the refused class says why.
            named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
            reason = (named or lines or [type(exc).__name__])[-1][:300]
            raise CheckpointRefused(f"checkpoint {self.folder}: {path.relative_to(self.folder)} holds more than "
                                    f"tensor data; not loaded ({reason})") from None


def verify(folder: Path) -> VerifiedCheckpoint:
    """Check every file of a local checkpoint copy against the sizes and sha256 its manifest
    recorded at save time; refuse a missing, changed or unlisted file by name. Nothing is
    unpickled here (the manifest is JSON). Call it on the copy that will be loaded: after a
    download from S3 too."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / storage.MANIFEST).read_text())
        listed = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointRefused(f"checkpoint {folder}: unreadable {storage.MANIFEST} ({exc})") from None
    stats: dict[str, tuple[int, int]] = {}
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointRefused(f"checkpoint {folder}: its manifest lists {rel!r}, outside the checkpoint")
        if not path.is_file():
            raise CheckpointRefused(f"checkpoint {folder}: {rel} is listed in its manifest but missing")
        actual = storage.sha256_file(path)
        if actual != entry.get("sha256"):
            raise CheckpointRefused(f"checkpoint {folder}: {rel} has sha256 {actual}, its manifest recorded "
                                    f"{entry.get('sha256')}; the file changed after the save, refusing to load it")
        st = path.stat()
        stats[rel] = (st.st_size, st.st_mtime_ns)
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        # Top-level dot files are the local copy's own bookkeeping (a download's completion mark).
        if path.is_file() and rel not in stats and rel != storage.MANIFEST and not rel.startswith("."):
            raise CheckpointRefused(f"checkpoint {folder}: {rel} is not listed in its {storage.MANIFEST}; "
                                    "refusing a file the save did not write")
    return VerifiedCheckpoint(folder, manifest, stats)


def run_fingerprint(cfg: Any, cache_dir: Path) -> str:
    """What makes two runs the same run: the resolved ``model`` and ``train`` sections and the
    cache's content (the sha256 of every cache file, from its manifest). Checkpoint manifests
    record it under the key ``run_spec`` (the name older checkpoints carry)."""
    from ..hashing import bytes_digest

    cache_dir = Path(cache_dir)
    try:
        cache_files = json.loads((cache_dir / storage.MANIFEST).read_text())["files"]
        cache_id = json.dumps({k: v.get("sha256") for k, v in sorted(cache_files.items())})
    except (OSError, ValueError, KeyError):
        cache_id = storage.sha256_file(cache_dir / "index.json") if (cache_dir / "index.json").exists() else ""
    body = json.dumps({"config": cfg.fingerprint("model", "train"), "cache": cache_id}, sort_keys=True)
    return bytes_digest(body.encode(), 16)


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
        with publish_shared(final, self.storage_cfg, extra, group=self.dist) as staging:
            write(staging)  # a write that fails leaves nothing behind: the staging folder goes with it
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
            if len(parts) == 2 and parts[1] == storage.MANIFEST and _STEP_NAME.match(parts[0]):
                names.add(parts[0])
        return sorted(names, key=lambda n: int(_STEP_NAME.match(n).group(1)))

    # -- reading -------------------------------------------------------------------------
    def resolve(self, resume: str) -> Optional[str]:
        """The checkpoint URI for ``--resume latest|auto|PATH``; None when ``latest`` finds none."""
        if resume in ("latest", "auto"):
            return self._latest()
        if not storage.is_published(resume, self.storage_cfg):
            raise UsageError(f"--resume {resume}: {resume} is not a complete checkpoint (no {storage.MANIFEST})")
        return resume

    def _latest(self) -> Optional[str]:
        """The checkpoint ``latest`` names; when it is empty or names no complete checkpoint (a
        crash between writes, a hand edit), the newest complete one, with a warning."""
        latest = storage.join(self.root, LATEST)
        try:
            name = storage.read_text(latest, self.storage_cfg).strip()
        except FileNotFoundError:
            name = None
        complete = self.list_complete()
        if name and name in complete:
            return storage.join(self.root, name)
        if not complete:
            if name is not None:
                log.warning("%s names %r, which is no complete checkpoint, and there is none", latest, name)
            return None
        problem = "is missing" if name is None else "is empty" if not name else f"names {name!r}, not a complete checkpoint"
        log.warning("%s %s; resuming from the newest complete checkpoint, %s", latest, problem, complete[-1])
        return storage.join(self.root, complete[-1])

    def same_run_or_fresh(self, uri: str, spec: str, resume: str) -> Optional[str]:
        """Collective. ``uri`` when its manifest records the run specification ``spec``.
        Otherwise ``--resume latest`` continues it with a warning (the user asked for it), and
        ``--resume auto`` (the DVC door, which owns the run folder) removes the checkpoints of
        the other run and returns None: a new run."""
        recorded = storage.read_manifest(uri, self.storage_cfg).get("run_spec")
        if recorded == spec:
            return uri
        if resume != "auto":
            log.warning("%s was written for another run specification (model/train config or cache changed); "
                        "continuing it as --resume %s asks", uri, resume)
            return uri
        log.warning("%s was written for another run specification (%s, this run %s: model/train config or "
                    "cache changed); starting a new run and removing %s", uri, recorded or "not recorded", spec,
                    self.root)
        self.dist.barrier()  # every rank has read the manifest before rank 0 removes it
        if self.dist.is_main:
            storage.delete(self.root, self.storage_cfg)
        self.dist.barrier()
        return None

    def materialize(self, uri: str) -> Path:
        return storage.materialize(uri, self.storage_cfg, kind="checkpoints")
