"""Which bucket each sample is encoded at, and where its latents are stored.

Latents of different buckets have different shapes, so a latent shard holds the samples of one
bucket only. The latent part stores the buckets one after another (in the order of the bucket
list), each bucket's samples in id order, and every bucket starts a new shard. A sample's
*latent row* is its address: ``shard number * shard_size + position in the shard``. Rows are
dense within a bucket and skip the unused tail of a bucket's last shard, so the shard of a row
is still ``row // shard_size`` for every reader (and the streamed reader fetches exactly that
file). With one bucket the addresses are 0, 1, 2, ... as before buckets existed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..data.buckets import Bucket, beyond_range, bucket_list, bucket_name, nearest_bucket

log = logging.getLogger(__name__)

SHOWN_IDS = 5  # the out-of-range warning names this many samples

# diffusers' T2IAdapter.total_downscale_factor over its downscale_factor (PixelUnshuffle): a full
# adapter halves once per block after the first, a light adapter once per block, the XL adapter once.
_EXTRA_DOWNSCALE = {"full_adapter": lambda n: 2 ** (n - 1), "light_adapter": lambda n: 2**n,
                    "full_adapter_xl": lambda n: 2}


def bucket_multiple(base: Any, model_cfg: Any) -> int:
    """What every bucket side must be a multiple of for this base model and adapter: the VAE's
    scale factor (pixels per latent cell) and the adapter's total downscale factor (pixels per
    cell of its smallest feature map; as diffusers' ``T2IAdapter.total_downscale_factor``), so
    the latent and every adapter feature divide exactly. The adapter's factor is already in
    pixels and includes the VAE's, so it is their least common multiple, not their product:
    64 for SD1.5's full adapter, 32 for SDXL's full_adapter_xl."""
    from ..models.family import adapter_kwargs_for

    kwargs = adapter_kwargs_for(base.unet_config, getattr(model_cfg, "adapter_type", "auto"),
                                getattr(model_cfg, "adapter_channels", None),
                                getattr(model_cfg, "num_res_blocks", 2), vae_scale_factor=base.vae_scale_factor)
    total = kwargs["downscale_factor"] * _EXTRA_DOWNSCALE[kwargs["adapter_type"]](len(kwargs["channels"]))
    return math.lcm(int(base.vae_scale_factor), int(total))


def encode_buckets(cfg: Any, ref: Any) -> tuple[list[Bucket], int]:
    """The bucket list ``encode.buckets`` names for this base model, and the multiple it used."""
    from ..models.resolve import load_base_model

    base = load_base_model(ref, cfg.storage, components=(), local_files_only=cfg.model.local_files_only)
    multiple = bucket_multiple(base, cfg.model)
    buckets = bucket_list(cfg.encode.buckets, cfg.encode.resolution, multiple)
    if cfg.encode.buckets == "square" and buckets[0] != (cfg.encode.resolution,) * 2:
        log.warning("encode: encode.resolution %d is not a multiple of %d (what this model's VAE and adapter need); "
                    "the square bucket is %s", cfg.encode.resolution, multiple, bucket_name(buckets[0]))
    return buckets, multiple


@dataclass
class Group:
    """The samples of one bucket, stored from shard ``first_shard`` on."""

    bucket_index: int
    bucket: Bucket
    rows: list
    first_shard: int


def assign(rows: Sequence, sizes: dict, buckets: Sequence[Bucket]) -> tuple[list[int], list[str]]:
    """Each row's bucket (an index into ``buckets``; ``sizes`` maps id -> (height, width)) and the
    ids of the rows wider or taller than every bucket (they go to the nearest one anyway)."""
    chosen, beyond = [], []
    for row in rows:
        height, width = sizes[row.id]
        chosen.append(list(buckets).index(nearest_bucket(height, width, buckets)))
        if len(buckets) > 1 and beyond_range(height, width, buckets):
            beyond.append(row.id)
    return chosen, beyond


def cropped_to_one_bucket(rows: Sequence, sizes: dict, buckets: Sequence[Bucket]) -> list[str]:
    """With a single bucket (``encode.buckets=square``): the ids of the rows whose aspect ratio is
    off the bucket's by more than :func:`beyond_range`'s tolerance, which its crop cuts down to it."""
    if len(buckets) != 1:
        return []
    return [row.id for row in rows if beyond_range(*sizes[row.id], buckets)]


def group_rows(rows: Sequence, chosen: Sequence[int], buckets: Sequence[Bucket], shard_size: int) -> list[Group]:
    """Rows grouped by bucket (in bucket-list order, ids in the given order), each group starting
    a new shard; empty buckets are left out."""
    groups, shard = [], 0
    for b, bucket in enumerate(buckets):
        members = [row for row, c in zip(rows, chosen) if c == b]
        if members:
            groups.append(Group(b, tuple(bucket), members, shard))
            shard += math.ceil(len(members) / shard_size)
    return groups


def log_buckets(buckets: Sequence[Bucket], multiple: int, groups: Sequence[Group], beyond: Sequence[str],
                cropped: Sequence[str] = ()) -> None:
    counts = {g.bucket_index: len(g.rows) for g in groups}
    log.info("encode: %d bucket(s), sides multiples of %d: %s", len(buckets), multiple,
             ", ".join(f"{bucket_name(b)} ({counts.get(i, 0)})" for i, b in enumerate(buckets)))
    if beyond:
        log.warning("encode: %d sample(s) are wider or taller than every bucket and go to the nearest (extreme) "
                    "one, losing more to the crop: %s%s", len(beyond), ", ".join(beyond[:SHOWN_IDS]),
                    ", ..." if len(beyond) > SHOWN_IDS else "")
    if cropped:
        log.warning("encode: %d of %d sample(s) are not the shape of the one bucket %s and are cropped to it: %s%s; "
                    "encode.buckets=auto (or a list of HxW) keeps their aspect ratio", len(cropped),
                    sum(len(g.rows) for g in groups), bucket_name(buckets[0]), ", ".join(cropped[:SHOWN_IDS]),
                    ", ..." if len(cropped) > SHOWN_IDS else "")


def slice_groups(groups: Sequence[Group], block: int, index: int, count: int, shard_size: int) -> list[Group]:
    """Slice ``index`` of ``count`` of a sharded encode: whole blocks of ``block`` rows (a multiple
    of the shard size and the batch size, counted from each bucket's start), spread evenly, so a
    slice writes whole shards, with the file numbers and batches of a one-process encode."""
    units = [(g, start) for g in groups for start in range(0, len(g.rows), block)]
    first, last = (len(units) * index) // count, (len(units) * (index + 1)) // count
    out: list[Group] = []
    for g, start in units[first:last]:
        rows = g.rows[start:start + block]
        if out and out[-1].bucket_index == g.bucket_index:
            out[-1].rows.extend(rows)
        else:
            out.append(Group(g.bucket_index, g.bucket, list(rows), g.first_shard + start // shard_size))
    return out
