"""The dataset contract every later stage reads.

A dataset is a set of rows, each with an id, a caption (``text``), a split and two images: the
target image and its conditioning image. :func:`load_rows` reads any supported root (see
:mod:`t2iops.data.formats`); :func:`split_of` assigns splits from a hash of the id, so adding
rows never moves old ones; :func:`load_validated_ids` reads the ids that ``t2iops data
validate`` accepted, which later stages use instead of trusting the raw metadata.

Row ids come from ``data.id_column`` when set; otherwise from an ``id`` key when rows have one,
else the image path, else the row's position (Arrow tables with embedded image bytes).
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping, Optional, Union

from PIL import Image

from .. import storage
from ..config import ConfigError
from ..errors import DataError
from ..hashing import raw_digest
from .formats import Record, Source, open_source
from .images import MISSING_FILE, ImageProblem, ImageRef, decode_rgb, displayed_size

SPLITS = ("train", "val", "test")
VALIDATED_ROWS = "rows.jsonl"
VALIDATION_REPORT = "report.json"

# Row-level error classes; image-level ones live in images.py.
INVALID_JSON = "invalid_json"
MISSING_COLUMN = "missing_column"
BAD_VALUE = "bad_value"
EMPTY_CAPTION = "empty_caption"
PATH_ESCAPE = "path_escape"
DUPLICATE_ID = "duplicate_id"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RowError(DataError):
    """A row that cannot be used; ``kind`` is its error class, ``file`` the file concerned."""

    def __init__(self, kind: str, message: str, file: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.file = file
        self.row_id: Optional[str] = None  # set once the row's id is known


def split_of(row_id: str, val_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"val"`` or ``"test"`` from a hash of the id alone: a row keeps its split
    when other rows are added or removed, on every machine and Python version."""
    digest = raw_digest(str(row_id).encode("utf-8"))
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def split_settings(split: str, cfg: Any) -> tuple[str, float]:
    """The setting that sizes ``split`` and its value (train takes what val and test leave)."""
    data = cfg.data
    if split == "train":
        return "1 - data.val_fraction - data.test_fraction", 1.0 - data.val_fraction - data.test_fraction
    return f"data.{split}_fraction", float(getattr(data, f"{split}_fraction"))


def suggested_fraction(rows: int, per_split: int = 3) -> float:
    """The smallest multiple of 0.05 (at most 0.5) that gives a split about ``per_split`` of ``rows``."""
    return min(0.5, -(-per_split * 20 // max(rows, 1)) / 20)


def check_split_not_empty(ids: Mapping[str, str], split: str, cfg: Any, validated: str, purpose: str) -> None:
    """Raise :class:`ConfigError` (exit 2) when the validated ``split`` holds no row: ``purpose``
    (the work that needs it) cannot happen, and the message names the settings to change."""
    if any(s == split for s in ids.values()):
        return
    setting, fraction = split_settings(split, cfg)
    good = len(ids)
    if split == "train":
        fix = "lower data.val_fraction and data.test_fraction"
    else:
        fix = (f"set -S {setting}={suggested_fraction(good):g} (now {fraction:g}) and run `t2iops data validate` "
               "again, or add rows")
    raise ConfigError(f"the validated split {split!r} at {validated} is empty ({good} good rows, {setting}="
                      f"{fraction:g}), so {purpose} would have nothing to work on; {fix}")


@dataclass
class Row:
    id: str
    text: str
    split: str
    meta: dict  # the raw row; image columns hold their path (or a label for embedded bytes)
    image_ref: ImageRef = field(repr=False)
    condition_ref: ImageRef = field(repr=False)
    max_pixels: int = field(default=64_000_000, repr=False)
    resize_condition: bool = field(default=False, repr=False)

    def load_image(self) -> Image.Image:
        return self._decode(self.image_ref)

    def load_condition(self) -> Image.Image:
        """The conditioning image in RGB; under ``resize_policy: resize`` it is resized
        (bilinear, so thin edges fade instead of vanishing) to the image's displayed size."""
        condition = self._decode(self.condition_ref)
        if self.resize_condition:
            size = displayed_size(self.image_ref, self.max_pixels)
            if condition.size != size:
                condition = condition.resize(size, Image.BILINEAR)
        return condition

    def _decode(self, ref: ImageRef) -> Image.Image:
        try:
            return decode_rgb(ref, self.max_pixels)
        except ImageProblem as exc:
            raise ImageProblem(exc.kind, f"row {self.id!r}: {exc} (validate the dataset to quarantine bad rows)",
                               exc.file) from None


# ---------------------------------------------------------------------------------------
# A column setting that names no column of any row is a configuration error (exit 2), not 100 %
# bad rows: the message lists the columns there are and the setting that picks the closest one.
COLUMN_SETTINGS = (("image_column", "image"), ("conditioning_image_column", "conditioning image"),
                   ("caption_column", "caption"), ("id_column", "id"))
_USUAL_NAMES = {
    "image": ("image", "img", "image_path", "file_name", "target", "target_image", "path"),
    "conditioning image": ("conditioning_image", "condition", "conditioning", "control_image", "control", "hint",
                           "source"),
    "caption": ("text", "caption", "prompt", "captions", "description", "sentence"),
    "id": ("id", "uid", "key", "name"),
}
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|bmp|gif|tiff?)$", re.IGNORECASE)


def _looks_like_image(value: Any) -> bool:
    return (isinstance(value, ImageRef) or (isinstance(value, dict) and ("bytes" in value or "path" in value))
            or (isinstance(value, str) and bool(_IMAGE_SUFFIX.search(value))))


def _fits(role: str, value: Any) -> bool:
    if role in ("image", "conditioning image"):
        return _looks_like_image(value)
    if role == "caption":
        return isinstance(value, str) and not _looks_like_image(value)
    return isinstance(value, (str, int))


class ColumnCheck:
    """Collects which columns the rows hold (and one value of each) while they are read; then
    :meth:`check` raises :class:`ConfigError` for a column setting that matches no row."""

    def __init__(self) -> None:
        self.samples: dict[str, Any] = {}

    def see(self, record: Record) -> None:
        for key, value in (record.values or {}).items():
            if self.samples.get(key) is None:
                self.samples[key] = value

    def check(self, cfg: Any, where: str) -> None:
        if not self.samples:
            return  # no row parsed at all: the rows' own errors say why
        data = cfg.data
        for setting, role in COLUMN_SETTINGS:
            column = getattr(data, setting)
            if column is None or column in self.samples:
                continue
            taken = {getattr(data, s) for s, _ in COLUMN_SETTINGS} - {column}
            message = (f"data.{setting}={column!r} names no column of {where}; its columns are: "
                       f"{', '.join(sorted(self.samples))}")
            guess = self.closest(column, role, taken)
            if guess is not None:
                message += f". Did you mean {guess!r}? Set -S data.{setting}={guess} (or data.{setting} in the params file)"
            else:
                message += f". Set data.{setting} to the {role} column (-S data.{setting}=NAME)"
            raise ConfigError(message)

    def closest(self, column: str, role: str, taken: set) -> Optional[str]:
        def score(name: str) -> float:
            usual = _USUAL_NAMES[role]
            return (difflib.SequenceMatcher(None, column.lower(), name.lower()).ratio()
                    + (1.0 if name.lower() in usual else 0.0) + (0.5 if _fits(role, self.samples[name]) else 0.0))

        candidates = [c for c in self.samples if c not in taken]
        if not candidates:
            return None
        best = max(sorted(candidates), key=score)
        return best if score(best) >= 0.5 else None


def _row_id(values: dict, record: Record, cfg_data: Any) -> str:
    if cfg_data.id_column:
        value = values.get(cfg_data.id_column)
        if value is None or str(value).strip() == "":
            raise RowError(MISSING_COLUMN, f"{record.where}: id column {cfg_data.id_column!r} is missing or empty",
                           record.file)
        return str(value)
    if values.get("id") is not None and str(values["id"]).strip():
        return str(values["id"])
    image = values.get(cfg_data.image_column)
    if isinstance(image, str) and image:
        return image
    return record.default_id


def _image_ref(values: dict, column: str, record: Record, source: Source) -> ImageRef:
    value = values.get(column)
    if isinstance(value, ImageRef):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        value = value["path"]
    if value is None or value == "":
        raise RowError(MISSING_COLUMN, f"{record.where}: column {column!r} is missing or empty", record.file)
    if not isinstance(value, str):
        raise RowError(BAD_VALUE, f"{record.where}: column {column!r} must be a relative path, "
                       f"got {type(value).__name__}", record.file)
    parts = re.split(r"[\\/]", value)
    if (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or value.startswith("\\")
            or _URL.match(value) or ".." in parts):
        raise RowError(PATH_ESCAPE, f"{record.where}: {column} path {value!r} leaves the dataset root "
                       "(absolute paths, URLs and '..' are refused)", value)
    if source.base is None:
        raise RowError(MISSING_FILE, f"{record.where}: {column} path {value!r} has no folder to resolve against",
                       value)
    base = source.base.resolve()
    path = (base / value).resolve()
    if not path.is_relative_to(base):  # a symlink pointing outside the root
        raise RowError(PATH_ESCAPE, f"{record.where}: {column} path {value!r} resolves outside the dataset root",
                       value)
    return ImageRef(value, path=path)


def row_from_record(record: Record, source: Source, cfg: Any, seen: dict[str, str]) -> Row:
    """Check everything about a row that needs no image decoding and build the Row.

    ``seen`` maps ids to where they first appeared; the first occurrence of an id wins (the
    same rule in validation and loading), later ones raise ``duplicate_id``."""
    data = cfg.data
    if record.values is None:
        raise RowError(INVALID_JSON, f"{record.where}: {record.error}", record.file)
    values = record.values
    row_id = _row_id(values, record, data)
    try:
        return _checked_row(row_id, record, source, cfg, seen)
    except RowError as exc:
        exc.row_id = row_id
        raise


def _checked_row(row_id: str, record: Record, source: Source, cfg: Any, seen: dict[str, str]) -> Row:
    data, values = cfg.data, record.values
    if row_id in seen:
        raise RowError(DUPLICATE_ID, f"{record.where}: id {row_id!r} already used by {seen[row_id]}", record.file)
    seen[row_id] = record.where
    for column in (data.image_column, data.conditioning_image_column, data.caption_column):
        if values.get(column) is None:
            raise RowError(MISSING_COLUMN, f"{record.where}: column {column!r} is missing or empty", record.file)
    text = values[data.caption_column]
    if not isinstance(text, str):
        raise RowError(BAD_VALUE, f"{record.where}: caption column {data.caption_column!r} must be a string, "
                       f"got {type(text).__name__}", record.file)
    if not text.strip():
        raise RowError(EMPTY_CAPTION, f"{record.where}: caption column {data.caption_column!r} is empty",
                       record.file)
    image_ref = _image_ref(values, data.image_column, record, source)
    condition_ref = _image_ref(values, data.conditioning_image_column, record, source)
    meta = {k: (v.name if isinstance(v, ImageRef) else v) for k, v in values.items()}
    return Row(
        id=row_id,
        text=text,
        split=split_of(row_id, data.val_fraction, data.test_fraction),
        meta=meta,
        image_ref=image_ref,
        condition_ref=condition_ref,
        max_pixels=data.max_pixels,
        resize_condition=data.resize_policy == "resize",
    )


def load_rows(
    root: str,
    cfg: Any,
    split: Optional[str] = None,
    ids: Union[set[str], Mapping[str, str], None] = None,
) -> list[Row]:
    """Rows of the dataset at ``root`` (local folder, s3:// prefix, HF id, save_to_disk
    folder, parquet shards), optionally only one split and/or only the given ids.

    With ``ids`` (normally :func:`load_validated_ids`), rows outside it are skipped, and when
    it is a mapping its splits are used, so later stages agree with validation even if the
    split fractions changed since. Without ``ids`` any bad row raises :class:`DataError`;
    validate the dataset first to quarantine bad rows instead."""
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    source = open_source(root, cfg)
    seen: dict[str, str] = {}
    found: set[str] = set()
    rows: list[Row] = []
    columns = ColumnCheck()
    for record in source.records():
        columns.see(record)
        try:
            row = row_from_record(record, source, cfg, seen)
        except RowError as exc:
            if ids is None:
                raise DataError(f"{source.description}: {exc}; run `t2iops data validate` to quarantine bad rows "
                                "and pass its output to later stages") from None
            continue
        if ids is not None:
            if row.id not in ids:
                continue
            found.add(row.id)
            if isinstance(ids, Mapping):
                row.split = ids[row.id]
        if split is None or row.split == split:
            rows.append(row)
    columns.check(cfg, source.description)
    if ids is not None and len(found) < len(ids):
        missing = sorted(set(ids) - found)
        raise DataError(f"{len(missing)} validated ids are not in the dataset at {root} (e.g. {missing[:3]}): "
                        "the data changed since validation; validate it again")
    return rows


def load_validated_ids(validated: str | Path, cfg: Any = None) -> dict[str, str]:
    """``{id: split}`` of the rows that ``t2iops data validate`` accepted at ``validated``.
    Refuses an unpublished or failed validation."""
    validated = str(validated)
    try:
        manifest = storage.read_manifest(validated, cfg)
    except storage.NotPublished as exc:
        raise DataError(f"{exc}; run `t2iops data validate --out {validated}` first") from None
    if manifest.get("status") == "failed":
        raise DataError(f"validation at {validated} failed (too many bad rows); see "
                        f"{storage.join(validated, VALIDATION_REPORT)}")
    out: dict[str, str] = {}
    text = storage.read_text(storage.join(validated, VALIDATED_ROWS), cfg)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            out[str(entry["id"])] = entry["split"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{storage.join(validated, VALIDATED_ROWS)} line {line_no} is damaged") from None
    return out
