"""What an evaluation samples and in which order: the rows, each row's aspect-ratio bucket, and
the sampling batches a shard takes (see :class:`EvaluationPlan`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import DataError, UsageError
from ..hashing import bytes_digest

STEM_CHARS = 48  # of a row id in an image file name


def evaluation_rows(data: str, validated: str, cfg: Any) -> list:
    """The first ``evaluate.num_samples`` validated rows of ``evaluate.split``, ordered by id."""
    from ..data.dataset import check_split_not_empty, load_rows, load_validated_ids

    split = cfg.evaluate.split
    ids = load_validated_ids(validated, cfg)
    # Before any model loads: an empty evaluation split is a configuration error (exit 2) that
    # names the settings sizing the split (`t2iops data validate` already warned about it).
    check_split_not_empty(ids, split, cfg, validated, f"the evaluation (evaluate.split={split})")
    rows = load_rows(data, cfg, split=split, ids=ids)
    if not rows:
        raise DataError(f"{data}: no validated rows in split {split!r} (evaluate.split)")
    rows.sort(key=lambda r: r.id)
    return rows[: cfg.evaluate.num_samples]


def eval_resolution(cfg: Any) -> int:
    return int(cfg.evaluate.resolution or cfg.encode.resolution)


def condition_size(row: Any) -> tuple[int, int]:
    """(width, height) of a row's condition as :meth:`Row.load_condition` returns it, read from
    the file's header (a condition resized to its image has the image's displayed size)."""
    from ..data.images import displayed_size

    ref = row.image_ref if row.resize_condition else row.condition_ref
    return displayed_size(ref, row.max_pixels)


@dataclass(frozen=True)
class EvaluationPlan:
    """The evaluation rows in sampling order, each row's bucket and the sampling batches.

    Rows are grouped by bucket (in the bucket list's order, square first) and by id within a
    bucket, and a batch never mixes buckets: the generator makes one size per call. With one
    bucket this is the rows in id order cut into ``evaluate.batch_size`` batches. A sample's
    index, and so its seed, is its place in this order."""

    rows: list
    sizes: list  # each row's bucket, (height, width)
    batches: list  # [(lo, hi), ...] sample ranges
    buckets: list  # the bucket list the rows were sorted into


def evaluation_plan(rows: list, buckets: list, batch_size: int) -> EvaluationPlan:
    """Sort ``rows`` (in id order) into ``buckets`` by their condition's aspect ratio."""
    from ..data.buckets import nearest_bucket

    if len(buckets) == 1:
        sizes = [buckets[0]] * len(rows)
    else:
        sizes = [nearest_bucket(h, w, buckets) for w, h in (condition_size(r) for r in rows)]
    order = sorted(range(len(rows)), key=lambda k: buckets.index(sizes[k]))  # stable: id order within a bucket
    rows, sizes = [rows[k] for k in order], [sizes[k] for k in order]
    batches, lo = [], 0
    while lo < len(rows):
        hi = lo
        while hi < len(rows) and hi - lo < batch_size and sizes[hi] == sizes[lo]:
            hi += 1
        batches.append((lo, hi))
        lo = hi
    return EvaluationPlan(rows=rows, sizes=sizes, batches=batches, buckets=list(buckets))


def shard_batches(batches: list, batch_size: int, index: int, count: int) -> list:
    """The batches of shard ``index`` of ``count``: a contiguous run of whole batches."""
    if count > len(batches):
        raise UsageError(f"{count} shards but only {len(batches)} batches of evaluate.batch_size={batch_size}")
    return batches[len(batches) * index // count: len(batches) * (index + 1) // count]


def sample_file_name(index: int, row_id: Any) -> str:
    """``<index>_<readable stem>_<hash>.png`` for any row id: no path separator, no ``..``, at
    most 68 characters (below a million samples). Ids can be image paths (``images/0001.png``)
    or anything a user's id column holds; the index keeps names unique within a run even when
    two ids sanitize alike, and the hash of the full id tells such ids apart to a reader."""
    text = str(row_id)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:STEM_CHARS] or "id"
    return f"{index:06d}_{stem}_{bytes_digest(text.encode('utf-8'), 8)}.png"
