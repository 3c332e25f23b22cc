"""Where dataset rows come from: one reader per on-disk format, one record shape out.

What a dataset root may be (checked in this order):

* a folder (or ``s3://`` prefix, downloaded once) with ``metadata.jsonl``: one JSON object per
  line, image columns hold paths relative to the folder;
* a folder with ``metadata.parquet``, or with ``*.parquet`` shards anywhere below it: image
  columns hold a relative path or the ``{"bytes": ..., "path": ...}`` struct that ``datasets``
  writes for its ``Image`` feature;
* a ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``), read through ``datasets``;
* a Hugging Face hub dataset written ``hf://owner/name``, e.g. ``hf://fusing/fill50k``
  (``datasets.load_dataset``); without the ``hf://`` a root is always a local path.

Arrow-backed formats are read column-wise without touching image bytes; an image's bytes are
fetched from the (memory-mapped) table only when that image is opened.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import storage
from ..errors import DataError, UsageError
from ..redact import redact_url
from .images import ImageRef

log = logging.getLogger(__name__)

METADATA_JSONL = "metadata.jsonl"
METADATA_PARQUET = "metadata.parquet"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
HF_PREFIX = "hf://"  # the only way a dataset root names the Hugging Face hub


@dataclass
class Record:
    """One raw row. ``values`` is None when the row could not be parsed (``error`` says why).
    Image columns hold a relative path (str), an :class:`ImageRef` (embedded bytes) or None."""

    index: int  # position over the whole dataset, 0-based
    file: str  # the metadata file or shard holding the row
    where: str  # "metadata.jsonl line 7", "train-00000.parquet row 3": for messages
    values: Optional[dict[str, Any]]
    default_id: str  # used when rows have no id column and no image path
    line: Optional[int] = None
    error: Optional[str] = None


class Source:
    """A readable dataset. ``base`` resolves relative image paths (None: there is none)."""

    description: str = ""
    format: str = ""
    base: Optional[Path] = None

    def __len__(self) -> int:
        raise NotImplementedError

    def records(self) -> Iterator[Record]:
        raise NotImplementedError


class JsonlSource(Source):
    format = "jsonl"

    def __init__(self, path: Path):
        self.path = path
        self.base = path.parent
        self.description = str(path)

    def __len__(self) -> int:
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def records(self) -> Iterator[Record]:
        name = self.path.name
        index = 0
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{name} line {line_no}"
                values, error = None, None
                try:
                    values = json.loads(line)
                    if not isinstance(values, dict):
                        values, error = None, f"expected a JSON object, got {type(values).__name__}"
                except json.JSONDecodeError as exc:
                    error = f"not valid JSON ({exc.msg} at column {exc.colno})"
                yield Record(index, name, where, values, default_id=str(index), line=line_no, error=error)
                index += 1


class ArrowSource(Source):
    """Rows of one or more Arrow tables (parquet shards, ``datasets`` splits), in order."""

    def __init__(self, tables: list[tuple[str, Any]], base: Optional[Path], description: str, fmt: str):
        self.tables = tables
        self.base = base
        self.description = description
        self.format = fmt

    def __len__(self) -> int:
        return sum(t.num_rows for _, t in self.tables)

    def records(self) -> Iterator[Record]:
        import pyarrow as pa

        index = 0
        single = len(self.tables) == 1
        for name, table in self.tables:
            image_columns = [f.name for f in table.schema if _is_image_struct(f.type)]
            plain_columns = [c for c in table.column_names if c not in image_columns]
            offset = 0
            for batch in table.to_batches(max_chunksize=1024):
                plain = batch.select(plain_columns).to_pylist() if plain_columns else [{}] * batch.num_rows
                refs = {}
                for col in image_columns:
                    arr = batch.column(col)
                    if isinstance(arr, pa.ChunkedArray):
                        arr = arr.combine_chunks()
                    refs[col] = (arr.is_null().to_pylist(), arr.field("path").to_pylist(),
                                 arr.field("bytes").is_null().to_pylist())
                for i, values in enumerate(plain):
                    row_in_table = offset + i
                    for col, (null, paths, no_bytes) in refs.items():
                        if null[i]:
                            values[col] = None
                        elif no_bytes[i]:
                            values[col] = paths[i]  # a path-only image: resolved like a jsonl path
                        else:
                            label = paths[i] or f"{name}[{row_in_table}].{col}"
                            values[col] = ImageRef(label, fetch=_CellBytes(table, col, row_in_table))
                    where = f"{name} row {row_in_table}"
                    default_id = str(index) if single else f"{name}:{row_in_table}"
                    yield Record(index, name, where, values, default_id=default_id)
                    index += 1
                offset += batch.num_rows


def _is_image_struct(arrow_type) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(arrow_type):
        return False
    names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
    return {"bytes", "path"} <= names


class _CellBytes:
    """Fetches one cell's image bytes from a table. A class, not a closure, so rows can be
    pickled to data-loader worker processes (the table travels with it)."""

    def __init__(self, table, column: str, row: int):
        self.table, self.column, self.row = table, column, row

    def __call__(self) -> bytes:
        return self.table.column(self.column)[self.row].as_py()["bytes"]


# ---------------------------------------------------------------------------------------
def open_source(root: str, cfg: Any) -> Source:
    """Find out what ``root`` holds and return a reader for it (see the module docstring).

    Only ``hf://owner/name`` goes to the Hugging Face hub: any other root is a local path or an
    ``s3://`` prefix, so a folder that is not there (``data/my-dataset``) is reported as such at
    once instead of being looked up on the hub."""
    root = str(root)
    if root.startswith(HF_PREFIX):
        return _open_hub(hub_id(root), cfg)
    if storage.is_s3(root):
        try:
            local = storage.materialize(root, cfg, kind="datasets")
        except FileNotFoundError:
            endpoint = storage.storage_settings(cfg)["endpoint_url"] or "the default AWS endpoint"
            raise DataError(f"dataset root {root} is empty or does not exist at endpoint {redact_url(endpoint)} "
                            "(storage.endpoint_url); check the bucket, the prefix and the endpoint") from None
        return _open_local(local, shown=root)
    if _URL.match(root):
        raise UsageError(f"dataset root {root}: unsupported scheme; use a folder, s3://bucket/prefix or "
                         f"{HF_PREFIX}owner/name (a Hugging Face dataset)")
    path = Path(root).expanduser()
    if path.exists():
        return _open_local(path, shown=root)
    hint = f"; a Hugging Face dataset is named {HF_PREFIX}{root}" if _HUB_ID.match(root) else ""
    raise DataError(f"dataset folder {root} does not exist (looked in {path.resolve()}){hint}")


def hub_id(root: str) -> str:
    """``hf://owner/name`` (or ``hf://datasets/owner/name``) -> ``owner/name``."""
    dataset_id = root[len(HF_PREFIX):].strip("/")
    if dataset_id.startswith("datasets/"):
        dataset_id = dataset_id[len("datasets/"):]
    if not _HUB_ID.match(dataset_id):
        raise UsageError(f"dataset root {root}: not a Hugging Face dataset id; write {HF_PREFIX}owner/name")
    return dataset_id


def _open_local(path: Path, shown: str) -> Source:
    if path.is_file():
        if path.suffix == ".jsonl":
            return JsonlSource(path)
        if path.suffix == ".parquet":
            return _parquet_source([path], path.parent, shown)
        raise DataError(f"dataset root {shown} is a file but neither .jsonl nor .parquet")
    if (path / METADATA_JSONL).is_file():
        return JsonlSource(path / METADATA_JSONL)
    if (path / METADATA_PARQUET).is_file():
        return _parquet_source([path / METADATA_PARQUET], path, shown)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _open_saved(path, shown)
    shards = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if shards:
        return _parquet_source(shards, path, shown)
    raise DataError(
        f"dataset root {shown} holds none of: {METADATA_JSONL}, {METADATA_PARQUET}, *.parquet shards, "
        "or a datasets save_to_disk folder (state.json / dataset_dict.json)"
    )


def _parquet_source(files: list[Path], base: Path, shown: str) -> ArrowSource:
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            tables.append((str(f.relative_to(base)), pq.read_table(f, memory_map=True)))
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataError(f"{shown}: cannot read parquet file {f.name}: {exc}") from None
    return ArrowSource(tables, base, shown, "parquet")


def _arrow_tables(dataset: Any) -> list[tuple[str, Any]]:
    """Tables of a ``datasets`` Dataset or DatasetDict (splits in their stored order)."""
    if isinstance(dataset, dict):  # DatasetDict
        return [(split, ds.with_format("arrow")[:]) for split, ds in dataset.items()]
    return [("data", dataset.with_format("arrow")[:])]


def _open_saved(path: Path, shown: str) -> ArrowSource:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{shown}: not a readable datasets save_to_disk folder ({exc})") from None
    return ArrowSource(_arrow_tables(dataset), path, shown, "save_to_disk")


def _open_hub(dataset_id: str, cfg: Any) -> ArrowSource:
    import datasets

    log.info("loading Hugging Face dataset %s", dataset_id)
    try:
        dataset = datasets.load_dataset(dataset_id)
    except Exception as exc:
        raise DataError(
            f"dataset root {HF_PREFIX}{dataset_id} could not be loaded as a Hugging Face "
            f"dataset ({type(exc).__name__}: {exc}). Offline, use one of: a local folder or s3:// prefix "
            f"with {METADATA_JSONL} or parquet shards, or a folder written by datasets' save_to_disk"
        ) from None
    return ArrowSource(_arrow_tables(dataset), None, dataset_id, "hub")
