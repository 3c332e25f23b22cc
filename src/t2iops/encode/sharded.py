"""Sharded encode: ``t2iops encode --shard i/n`` encodes one slice, ``t2iops encode merge`` joins
the slices into the cache a one-process encode writes, file for file.

Every process plans the same rows, buckets, keys and index (:func:`plan_encode`). Slice ``i``
takes a contiguous run of latent blocks (within each bucket, counted from the bucket's first
shard) and of unique captions whose boundaries fall on multiples of both the shard size and the
encode batch size, so each slice writes whole shards with the same file numbers, and the same
batches, as the one-process encode: the merged tensors are equal.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from .. import storage
from ..config import Config
from ..errors import DataError, UsageError
from .cache import EMPTY_PROMPT, PART, TEXT_SHARD_SIZE
from .bucketing import slice_groups
from .encode import cached_reference, encode_latents, encode_text, finish_index, plan_encode

SLICE = "slice.json"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n: the ``--shard`` of every sharded command."""
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def slice_range(total: int, block: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of slice ``index`` of ``count``: whole blocks, spread evenly."""
    blocks = math.ceil(total / block) if total else 0
    first, last = (blocks * index) // count, (blocks * (index + 1)) // count
    return min(first * block, total), min(last * block, total)


def encode_shard(data_root: str, validated_dir: str, out: str, cfg: Config, shard: tuple[int, int]) -> dict:
    """Encode slice ``shard = (i, n)`` into a partial cache at ``out``; returns its slice info."""
    index_no, count = shard
    groups, keys, index = plan_encode(data_root, validated_dir, cfg)
    latent_block = math.lcm(cfg.encode.shard_size, cfg.encode.batch_size)
    text_block = math.lcm(TEXT_SHARD_SIZE, cfg.encode.batch_size)
    mine = slice_groups(groups, latent_block, index_no, count, cfg.encode.shard_size)
    text_from, text_to = slice_range(len(keys["captions"]), text_block, index_no, count)
    info = {"shard": [index_no, count], "rows": sum(len(g.rows) for g in mine), "captions": [text_from, text_to],
            "index": index}
    with storage.publish(out, cfg, extra={"kind": "t2iops-cache-slice", "shard": f"{index_no}/{count}"}) as staging:
        encode_text(keys["captions"][text_from:text_to], staging / index["text"]["dir"], cfg,
                    cached_reference(index), first_shard=text_from // TEXT_SHARD_SIZE)
        encode_latents(mine, staging / index["latents"]["dir"], cfg, cached_reference(index))
        (staging / SLICE).write_text(json.dumps(info))
        cfg.write(staging)
    return info


def _read_slices(shards: list[str], cfg: Config) -> list[tuple[Path, dict]]:
    slices = []
    for uri in shards:
        storage.read_manifest(uri, cfg)  # refuses a slice that was never completely published
        local = storage.materialize(uri, cfg, kind="caches")
        if not (local / SLICE).exists():
            raise DataError(f"{uri} is not the output of `t2iops encode --shard i/n` ({SLICE} missing)")
        slices.append((local, json.loads((local / SLICE).read_text())))
    slices.sort(key=lambda s: s[1]["shard"][0])
    count = slices[0][1]["shard"][1]
    got = [s[1]["shard"] for s in slices]
    if got != [[i, count] for i in range(count)]:
        raise UsageError(f"encode merge needs every slice 0..{count - 1} of {count} exactly once; got "
                         f"{', '.join(f'{i}/{n}' for i, n in got)}")
    first = slices[0][1]["index"]
    for uri, (_, info) in zip(shards, slices):
        if info["index"] != first:
            raise DataError(f"{uri} was encoded from other data, model or settings than slice 0 "
                            "(cache index differs); encode every slice with the same inputs")
    return slices


def _link(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def merge_shards(shards: list[str], out: str, cfg: Config) -> str:
    """Join the slices at ``shards`` (folders or s3:// prefixes) into one cache at ``out``."""
    slices = _read_slices(shards, cfg)
    index = slices[0][1]["index"]
    dataset_version = index["dataset_version"]
    with storage.publish(out, cfg, extra={"kind": "t2iops-cache", "dataset_version": dataset_version}) as staging:
        for part, listed in (("text", "captions"), ("latents", "ids")):
            rel = index[part]["dir"]
            merged = None
            for local, _ in slices:
                piece = json.loads((local / rel / PART).read_text())
                for shard in piece["shards"]:
                    _link(local / rel / shard["file"], staging / rel / shard["file"])
                if merged is None:
                    merged = piece
                else:
                    merged["shards"] += piece["shards"]
                    merged[listed] += piece[listed]
            (staging / rel / PART).write_text(json.dumps(merged))
        _link(slices[0][0] / index["text"]["dir"] / EMPTY_PROMPT, staging / index["text"]["dir"] / EMPTY_PROMPT)
        finish_index(index, staging)
        shutil.copy2(slices[0][0] / "config.resolved.yaml", staging / "config.resolved.yaml")
    return out
