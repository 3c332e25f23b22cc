"""``t2iops data validate``: check every row, quarantine the bad ones, publish the good ids.

Each row is checked in this order and gets the first error class that applies:
``invalid_json``, ``missing_column``, ``duplicate_id``, ``bad_value``, ``empty_caption``,
``path_escape``, ``missing_file``, ``decompression_bomb`` (from the header, nothing decoded),
``corrupt_image``, ``unsupported_image`` (a mode with no defined 8-bit RGB form, e.g. float
pixels; see :mod:`t2iops.data.images` for how every other mode decodes), ``too_small`` / ``too_large`` (data.min_size / data.max_size), and
``size_mismatch`` (image and condition differ under ``resize_policy: strict``). Sizes are
the displayed ones, after EXIF orientation.

Outputs (published atomically): ``report.json`` (counts per class, the offending rows, the range
of the good images' aspect ratios, the rows per split and a warning for each empty split),
``quarantine.jsonl`` (every bad row with its class), ``rows.jsonl`` (every good row:
``{"id", "split"}``), ``config.resolved.yaml``.

A failed validation publishes nothing at ``out`` that a later stage could take for a verdict:
when the bad share exceeds ``data.max_bad_fraction`` (or no row is good) the stage raises
:class:`DataError` (exit 1), withdraws an earlier output at ``out`` and publishes ``report.json``,
``quarantine.jsonl`` and the resolved configuration beside it, at ``<out>.failed`` (see
:func:`failure_location`), marked ``failed``. A column setting that names no column of any row
is a configuration error (exit 2) and publishes nothing at all.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Optional

from .. import storage
from ..errors import DataError
from ..progress import progress
from .dataset import (SPLITS, VALIDATED_ROWS, VALIDATION_REPORT, ColumnCheck, Row, RowError, row_from_record,
                      split_settings, suggested_fraction)
from .formats import open_source
from .images import ImageProblem, decode_rgb

log = logging.getLogger(__name__)

QUARANTINE = "quarantine.jsonl"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
SIZE_MISMATCH = "size_mismatch"
SQUARE_BAND = (0.8, 1.25)  # width / height counted as about square in the aspect summary
REPORT_MAX_ROWS = 1000  # report.json lists this many offending rows; quarantine.jsonl has all
FAILED_SUFFIX = ".failed"
ROWS_PER_SPLIT_HINT = 3  # the rows a split's suggested fraction should give on average


def failure_location(out: str) -> str:
    """Where a failed validation's report goes: beside ``out``, named as a failure."""
    return str(out).rstrip("/") + FAILED_SUFFIX


def empty_split_warnings(splits: dict[str, int], good: int, cfg: Any) -> list[str]:
    """One line per split that got no row although the settings ask for it, naming the setting
    that sizes it and a value that would give it about :data:`ROWS_PER_SPLIT_HINT` rows."""
    warnings = []
    for split in SPLITS:
        if splits.get(split, 0) or not good:
            continue
        setting, fraction = split_settings(split, cfg)
        if fraction <= 0 and split != "train":
            continue  # no such split asked for
        use = {"test": "the evaluation samples it (evaluate.split, 'test' by default)",
               "val": "validation during training samples it (train.validate_every)",
               "train": "training has nothing to learn from"}[split]
        if split == "train":
            fix = "lower data.val_fraction and data.test_fraction"
        else:
            fix = (f"validate again with -S {setting}={suggested_fraction(good, ROWS_PER_SPLIT_HINT):g} (about "
                   f"{ROWS_PER_SPLIT_HINT} rows) or add rows")
        warnings.append(f"split {split!r} is empty: {setting}={fraction:g} of {good} good rows gave none, and "
                        f"{use}; {fix}")
    return warnings


def check_images(row: Row, cfg: Any) -> tuple[int, int]:
    """Decode both images with the stages' own decoder and check their displayed sizes; raises
    RowError / ImageProblem. Returns the image's displayed (width, height)."""
    data = cfg.data
    sizes = {}
    for role, ref in (("image", row.image_ref), ("conditioning image", row.condition_ref)):
        image = decode_rgb(ref, data.max_pixels)
        width, height = image.size
        if min(width, height) < data.min_size:
            raise RowError(TOO_SMALL, f"{ref.name}: {role} is {width}x{height}, smaller than "
                           f"data.min_size={data.min_size}", ref.name)
        if max(width, height) > data.max_size:
            raise RowError(TOO_LARGE, f"{ref.name}: {role} is {width}x{height}, larger than "
                           f"data.max_size={data.max_size}", ref.name)
        sizes[role] = image.size
    if data.resize_policy == "strict" and sizes["image"] != sizes["conditioning image"]:
        (iw, ih), (cw, ch) = sizes["image"], sizes["conditioning image"]
        raise RowError(SIZE_MISMATCH, f"{row.condition_ref.name}: conditioning image is {cw}x{ch} but image "
                       f"{row.image_ref.name} is {iw}x{ih} (data.resize_policy=strict)", row.condition_ref.name)
    return sizes["image"]


def aspect_summary(aspects: dict[str, float]) -> dict:
    """The range of the good images' aspect ratios (width / height), the ids at both ends and how
    many are tall, about square or wide: whether square crops would cut much off, and which
    ``encode.buckets`` the data needs (the encode stage reports the samples beyond its buckets)."""
    if not aspects:
        return {}
    tallest = min(aspects, key=lambda i: (aspects[i], i))
    widest = min(aspects, key=lambda i: (-aspects[i], i))  # the first id on a tie, as for the tallest
    values = list(aspects.values())
    return {
        "min": round(aspects[tallest], 4), "max": round(aspects[widest], 4),
        "tallest": tallest, "widest": widest,
        "tall": sum(a < SQUARE_BAND[0] for a in values),
        "square": sum(SQUARE_BAND[0] <= a <= SQUARE_BAND[1] for a in values),
        "wide": sum(a > SQUARE_BAND[1] for a in values),
    }


def validate(root: str, out: str, cfg: Any) -> dict:
    """Validate the dataset at ``root`` and publish the verdict to ``out``; returns the report."""
    source = open_source(root, cfg)
    seen: dict[str, str] = {}
    good: list[dict] = []
    bad: list[dict] = []
    aspects: dict[str, float] = {}
    columns = ColumnCheck()
    for record in progress(source.records(), total=len(source), desc="validate", unit="row"):
        columns.see(record)
        row: Optional[Row] = None
        try:
            row = row_from_record(record, source, cfg, seen)
            width, height = check_images(row, cfg)
        except (RowError, ImageProblem) as exc:
            message = str(exc) if str(exc).startswith(record.where) else f"{record.where}: {exc}"
            entry = {
                "row": record.index,
                "where": record.where,
                "file": exc.file or record.file,
                "id": row.id if row is not None else getattr(exc, "row_id", None),
                "error": exc.kind,
                "message": message,
            }
            if record.line is not None:
                entry["line"] = record.line
            entry["record"] = row.meta if row is not None else _printable(record.values)
            bad.append(entry)
            continue
        good.append({"id": row.id, "split": row.split})
        aspects[row.id] = width / height

    total = len(good) + len(bad)
    if total == 0:
        raise DataError(f"dataset {root} has no rows")
    columns.check(cfg, source.description)  # a wrong column setting: exit 2, nothing published
    bad_fraction = len(bad) / total
    failed = bad_fraction > cfg.data.max_bad_fraction or not good
    report = {
        "status": "failed" if failed else "passed",
        "root": str(root),
        "format": source.format,
        "rows": total,
        "good": len(good),
        "bad": len(bad),
        "bad_fraction": bad_fraction,
        "max_bad_fraction": cfg.data.max_bad_fraction,
        "errors": dict(sorted(Counter(b["error"] for b in bad).items())),
        "splits": {s: n for s, n in sorted(Counter(g["split"] for g in good).items())},
        "warnings": [],
        "aspect_ratios": aspect_summary(aspects),
        "bad_rows": [{k: v for k, v in b.items() if k != "record"} for b in bad[:REPORT_MAX_ROWS]],
        "bad_rows_listed": min(len(bad), REPORT_MAX_ROWS),
    }
    report["warnings"] = [] if failed else empty_split_warnings(report["splits"], len(good), cfg)
    for cls, n in report["errors"].items():
        log.warning("%d rows quarantined as %s", n, cls)
    if failed:
        _publish_failure(out, report, bad, cfg)
        first = bad[0]["message"] if bad else ""
        raise DataError(
            f"{len(bad)} of {total} rows are bad ({bad_fraction:.1%} > data.max_bad_fraction="
            f"{cfg.data.max_bad_fraction}), e.g. {first}; nothing published at {out}; report: "
            f"{storage.join(failure_location(out), VALIDATION_REPORT)}"
        )
    with storage.publish(out, cfg, extra={"stage": "validate", "status": report["status"]}) as staging:
        (staging / VALIDATION_REPORT).write_text(json.dumps(report, indent=2))
        (staging / QUARANTINE).write_text("".join(json.dumps(b, default=str) + "\n" for b in bad))
        (staging / VALIDATED_ROWS).write_text("".join(json.dumps(g) + "\n" for g in good))
        cfg.write(staging)
    if storage.exists(failure_location(out), cfg):
        storage.delete(failure_location(out), cfg)  # an earlier failure's report no longer applies
    for warning in report["warnings"]:
        log.warning("%s", warning)
    log.info("validated %s: %d good rows, %d quarantined -> %s", root, len(good), len(bad), out)
    return report


def _publish_failure(out: str, report: dict, bad: list[dict], cfg: Any) -> None:
    """Withdraw an earlier verdict at ``out`` (it no longer describes the data) and publish the
    failure's report and quarantine at :func:`failure_location`; no ``rows.jsonl`` anywhere."""
    try:
        earlier = storage.read_manifest(out, cfg).get("stage")
    except storage.NotPublished:
        earlier = None
    if earlier == "validate":  # only an earlier verdict: never whatever else --out names by mistake
        log.warning("validation failed: removing the earlier verdict at %s", out)
        storage.delete(out, cfg)
    with storage.publish(failure_location(out), cfg, extra={"stage": "validate", "status": "failed"}) as staging:
        (staging / VALIDATION_REPORT).write_text(json.dumps(report, indent=2))
        (staging / QUARANTINE).write_text("".join(json.dumps(b, default=str) + "\n" for b in bad))
        cfg.write(staging)


def _printable(values: Optional[dict]) -> Optional[dict]:
    return None if values is None else {k: (getattr(v, "name", v)) for k, v in values.items()}
