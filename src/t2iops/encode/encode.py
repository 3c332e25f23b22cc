"""``t2iops encode``: VAE latents and text embeddings, computed once, cached in shards.

Training from the cache runs only the UNet and the adapter per step; encoding every step (as
the diffusers example does) runs the VAE encoder and both text encoders again for every sample
of every epoch. See :mod:`t2iops.encode.cache` for the layout.

Re-running is incremental per part: when the text key and the latent key of the new run match
the published cache, nothing is done; when only one matches, that part is carried over and
the other one is encoded again.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from .. import storage
from ..config import Config
from ..errors import DataError
from . import augment, bucketing
from .cache import CACHE_FORMAT, EMPTY_PROMPT, INDEX, PART, TEXT_SHARD_SIZE, encode_png, shard_name
from ..devices import default_device, torch_dtype
from ..hashing import digest
from ..models.reference import BaseModelRef
from .fingerprint import dataset_fingerprints, model_identity

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")


def cache_keys(cfg: Config, fingerprints: list[dict], model: dict, buckets: list) -> dict:
    """The two part keys and the dataset version. Each key covers exactly what its part is
    computed from (and the cache format), nothing else."""
    enc = cfg.encode
    captions = sorted({f["text"] for f in fingerprints})
    text_key = digest([CACHE_FORMAT, "text", model["text_hash"], enc.storage_dtype, captions])
    augmentation = augmentation_policy(cfg)
    images = [(f["id"], f["image"], f["condition"]) for f in fingerprints]
    latent_key = digest([CACHE_FORMAT, "latents", model["vae_hash"], enc.resolution, [list(b) for b in buckets],
                         augmentation, enc.latents, enc.storage_dtype, images])
    return {
        "text": text_key,
        "latents": latent_key,
        "dataset_version": digest([(f["id"], f["split"], f["text"], f["image"], f["condition"]) for f in fingerprints]),
        "captions": captions,
    }


def augmentation_policy(cfg: Config) -> dict:
    enc = cfg.encode
    # The crop seed only matters when crops are random; keep it out of the key otherwise.
    return {"random_crop": enc.random_crop, "random_flip": enc.random_flip,
            "crop_seed": enc.seed if enc.random_crop else None}


def plan_encode(data_root: str, validated_dir: str, cfg: Config) -> tuple[list, dict, dict]:
    """The rows to encode grouped by bucket (:mod:`t2iops.encode.bucketing`), the part keys and
    the cache index; the same in every process of a sharded encode."""
    from ..data.dataset import load_rows, load_validated_ids

    ids = load_validated_ids(validated_dir, cfg)
    wanted = {i: s for i, s in ids.items() if s in cfg.encode.splits}
    if not wanted:
        raise DataError(f"{validated_dir}: no validated rows in splits {cfg.encode.splits} (encode.splits)")
    rows = [r for r in load_rows(data_root, cfg, ids=ids) if r.id in wanted]
    rows.sort(key=lambda r: r.id)
    log.info("encode: %d rows (%s)", len(rows), ", ".join(f"{s}={sum(r.split == s for r in rows)}" for s in SPLIT_ORDER))
    fingerprints = dataset_fingerprints(rows)
    model = model_identity(cfg.model, cfg)
    buckets, multiple = bucketing.encode_buckets(cfg, model["ref"])
    sizes = {f["id"]: f["size"] for f in fingerprints}
    chosen, beyond = bucketing.assign(rows, sizes, buckets)
    groups = bucketing.group_rows(rows, chosen, buckets, cfg.encode.shard_size)
    bucketing.log_buckets(buckets, multiple, groups, beyond, bucketing.cropped_to_one_bucket(rows, sizes, buckets))
    keys = cache_keys(cfg, fingerprints, model, buckets)
    return groups, keys, _build_index(cfg, groups, buckets, keys, model)


def finish_index(index: dict, staging: Path) -> None:
    """Facts of the encoded parts the trainer checks against the model it loads."""
    index["family"] = json.loads((staging / index["text"]["dir"] / PART).read_text())["family"]
    index["scaling_factor"] = json.loads((staging / index["latents"]["dir"] / PART).read_text())["scaling_factor"]
    (staging / INDEX).write_text(json.dumps(index, indent=1))


def encode_dataset(data_root: str, validated_dir: str, out: str, cfg: Config) -> str:
    """Encode the validated rows of ``cfg.encode.splits`` at ``data_root`` into a cache at ``out``
    (folder or s3:// prefix). Returns ``out``. A no-op when the published cache is up to date."""
    groups, keys, index = plan_encode(data_root, validated_dir, cfg)
    previous = _published_index(out, cfg)
    if previous is not None and _same(previous, index):
        log.info("encode: %s is up to date (dataset %s, text %s, latents %s); nothing to do",
                 out, keys["dataset_version"], keys["text"], keys["latents"])
        return out

    with storage.publish(out, cfg, extra={"kind": "t2iops-cache", "dataset_version": keys["dataset_version"]}) as staging:
        for part in ("text", "latents"):
            target = staging / index[part]["dir"]
            if previous is not None and previous[part]["key"] == index[part]["key"]:
                log.info("encode: %s unchanged (key %s), carried over", part, index[part]["key"])
                _carry_over(out, index[part]["dir"], target, cfg)
            elif part == "text":
                encode_text(keys["captions"], target, cfg, cached_reference(index))
            else:
                encode_latents(groups, target, cfg, cached_reference(index))
        finish_index(index, staging)
        cfg.write(staging)
    return out


# ---------------------------------------------------------------------------------------
def _build_index(cfg: Config, groups: list, buckets: list, keys: dict, model: dict) -> dict:
    caption_row = {c: i for i, c in enumerate(keys["captions"])}
    placed = sorted((row.id, row, g.bucket_index, g.first_shard * cfg.encode.shard_size + k)
                    for g in groups for k, row in enumerate(g.rows))
    samples: dict[str, dict] = {}
    for _, row, bucket, latent_row in placed:  # each split lists its samples in id order
        entry = samples.setdefault(row.split, {"ids": [], "latent_rows": [], "text_rows": [], "buckets": []})
        entry["ids"].append(row.id)
        entry["latent_rows"].append(latent_row)
        entry["text_rows"].append(caption_row[row.text])
        entry["buckets"].append(bucket)
    return {
        "format": CACHE_FORMAT,
        "dataset_version": keys["dataset_version"],
        "base_model": model["ref"].to_dict(),
        "force_zeros_for_empty_prompt": model.get("force_zeros_for_empty_prompt"),
        "resolution": cfg.encode.resolution,
        "buckets": [list(b) for b in buckets],
        "augmentation": augmentation_policy(cfg),
        "latents_kind": cfg.encode.latents,
        "text": {"key": keys["text"], "dir": f"text/{keys['text']}"},
        "latents": {"key": keys["latents"], "dir": f"latents/{keys['latents']}"},
        "samples": samples,
    }


def _same(previous: dict, index: dict) -> bool:
    fields = ("format", "dataset_version", "base_model", "resolution", "buckets", "augmentation", "latents_kind",
              "samples")
    return (all(previous.get(f) == index.get(f) for f in fields)
            and previous["text"]["key"] == index["text"]["key"]
            and previous["latents"]["key"] == index["latents"]["key"])


def _published_index(out: str, cfg: Config) -> Optional[dict]:
    if not storage.is_published(out, cfg):
        return None
    try:
        return json.loads(storage.read_text(storage.join(out, INDEX), cfg))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _carry_over(out: str, rel: str, target: Path, cfg: Config) -> None:
    """Bring an unchanged part of the published cache into the staging folder (hard links
    locally, so carrying 20 GB over costs nothing; a download from S3)."""
    source = storage.join(out, rel)
    if storage.is_s3(source):
        storage.download_dir(source, target, cfg)
        return
    for path in sorted(Path(source).rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def cached_reference(index: dict) -> BaseModelRef:
    """The base model a cache index records (saved by :func:`_build_index`)."""
    return BaseModelRef.from_dict(index["base_model"], where=f"cache {INDEX}")


def _encode_dtype(ref: BaseModelRef, device, force_upcast: bool = False):
    import torch

    from ..devices import inference_dtype

    dtype = inference_dtype(ref.dtype, device)
    # SDXL's original VAE overflows in fp16 (force_upcast in its config); the fp16-fix VAE does not.
    return torch.float32 if (force_upcast and dtype == torch.float16) else dtype


class ShardWriter:
    """Collects rows and writes a safetensors shard every ``shard_size`` rows. ``blobs`` are
    variable-length byte rows (compressed conditions), stored as one uint8 column plus
    ``<name>_offsets``. ``first_shard`` numbers the files of one slice of a sharded encode."""

    def __init__(self, folder: Path, shard_size: int, first_shard: int = 0):
        self.folder = folder
        self.shard_size = shard_size
        self.first_shard = first_shard
        self.pending: dict[str, list] = {}
        self.pending_blobs: dict[str, list[bytes]] = {}
        self.count = 0
        self.shards: list[dict] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, blobs: Optional[dict] = None, **tensors) -> None:
        n = len(next(iter(tensors.values())))
        start = 0
        while start < n:
            take = min(self.shard_size - self.count, n - start)
            for name, t in tensors.items():
                self.pending.setdefault(name, []).append(t[start:start + take].cpu())
            for name, rows in (blobs or {}).items():
                self.pending_blobs.setdefault(name, []).extend(rows[start:start + take])
            self.count += take
            start += take
            if self.count == self.shard_size:
                self.flush()

    def flush(self) -> None:
        import torch
        from safetensors.torch import save_file

        if not self.count:
            return
        name = shard_name(self.first_shard + len(self.shards))
        tensors = {k: torch.cat(v).contiguous() for k, v in self.pending.items()}
        for key, rows in self.pending_blobs.items():
            tensors[key] = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8)
            tensors[key + "_offsets"] = torch.tensor([0, *itertools.accumulate(len(r) for r in rows)], dtype=torch.int64)
        save_file(tensors, str(self.folder / name))
        self.shards.append({"file": name, "count": self.count})
        self.pending, self.pending_blobs, self.count = {}, {}, 0


def encode_text(captions: list[str], target: Path, cfg: Config, ref: BaseModelRef, first_shard: int = 0) -> None:
    """Embeddings of each unique caption (rows in ``captions`` order) and of the empty prompt."""
    import torch
    from safetensors.torch import save_file

    from ..models.resolve import load_base_model
    from ..models.text import encode_prompts
    from ..progress import progress

    device = default_device()
    base = load_base_model(ref, cfg.storage, dtype=_encode_dtype(ref, device), components=("text_encoders",),
                           local_files_only=cfg.model.local_files_only)
    for encoder in base.text_encoders:
        encoder.to(device).eval().requires_grad_(False)
    store = torch_dtype(cfg.encode.storage_dtype)
    writer = ShardWriter(target, TEXT_SHARD_SIZE, first_shard)
    bs = cfg.encode.batch_size
    with torch.inference_mode():
        for start in progress(range(0, len(captions), bs), desc="encode text", unit="batch"):
            emb = encode_prompts(base, captions[start:start + bs])
            writer.add(**{k: v.to(store) for k, v in emb.items()})
        writer.flush()
        empty = encode_prompts(base, [""])
        save_file({k: v.to(store).cpu().contiguous() for k, v in empty.items()}, str(target / EMPTY_PROMPT))
    part = {"captions": captions, "shard_size": TEXT_SHARD_SIZE, "shards": writer.shards,
            "pooled": "pooled_prompt_embeds" in empty, "family": base.family}
    (target / PART).write_text(json.dumps(part))


def _load_pair(row, bucket: tuple, cfg: Config):
    import numpy as np
    import torch

    image, condition, plan = augment.prepare_pair(
        row.load_image(), row.load_condition(), tuple(bucket), cfg.encode.random_crop,
        augment.sample_seed(cfg.encode.seed, row.id),
    )
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    cond = torch.from_numpy(np.asarray(condition, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels, cond, plan


def encode_latents(groups: list, target: Path, cfg: Config, ref: BaseModelRef) -> None:
    """VAE posteriors of each row's image (and of its mirror image when flips are on), its
    condition as a lossless PNG, and its SDXL time ids; ``groups`` (one per bucket, see
    :mod:`t2iops.encode.bucketing`) each write their own shards."""
    import torch

    from ..models.resolve import load_base_model

    device = default_device()
    base = load_base_model(ref, cfg.storage, dtype=torch.float32, components=("vae",),
                           local_files_only=cfg.model.local_files_only)
    vae = base.vae
    dtype = _encode_dtype(ref, device, bool(getattr(vae.config, "force_upcast", False)))
    vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    shards: list[dict] = []
    for group in groups:
        shards += _encode_group(group, target, cfg, vae, device, dtype)
    part = {
        "ids": [r.id for g in groups for r in g.rows],
        "shard_size": cfg.encode.shard_size,
        "shards": shards,
        "resolution": cfg.encode.resolution,
        "augmentation": augmentation_policy(cfg),
        "latents": cfg.encode.latents,
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": getattr(vae.config, "shift_factor", None),
        "encode_dtype": str(dtype).replace("torch.", ""),
    }
    target.mkdir(parents=True, exist_ok=True)
    (target / PART).write_text(json.dumps(part))


def _encode_group(group, target: Path, cfg: Config, vae, device, dtype) -> list[dict]:
    """Encode the rows of one bucket into shards from ``group.first_shard`` on; returns them, each
    with its bucket."""
    import torch

    from ..progress import progress

    store = torch_dtype(cfg.encode.storage_dtype)
    writer = ShardWriter(target, cfg.encode.shard_size, group.first_shard)
    bs = cfg.encode.batch_size
    name = "latent_moments" if cfg.encode.latents == "sample" else "latent_mean"

    def posterior(pixels):
        x = (pixels.to(device=device, dtype=dtype) / 127.5) - 1.0
        dist = vae.encode(x).latent_dist
        return (dist.parameters if cfg.encode.latents == "sample" else dist.mean).to(store)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, torch.inference_mode():
        batches = [group.rows[i:i + bs] for i in range(0, len(group.rows), bs)]
        for batch in progress(batches, desc=f"encode latents {group.bucket[0]}x{group.bucket[1]}", unit="batch"):
            loaded = list(pool.map(lambda r: _load_pair(r, group.bucket, cfg), batch))
            pngs = list(pool.map(encode_png, [c for _, c, _ in loaded]))
            pixels = torch.stack([p for p, _, _ in loaded])
            tensors = {
                name: posterior(pixels),
                "time_ids": torch.tensor([plan.time_ids() for _, _, plan in loaded], dtype=torch.int32),
            }
            if cfg.encode.random_flip:
                tensors[name + "_flipped"] = posterior(pixels.flip(-1))
                tensors["time_ids_flipped"] = torch.tensor([plan.time_ids(flipped=True) for _, _, plan in loaded],
                                                           dtype=torch.int32)
            writer.add(blobs={"conditions_png": pngs}, **tensors)
        writer.flush()
    return [{**shard, "bucket": list(group.bucket)} for shard in writer.shards]
