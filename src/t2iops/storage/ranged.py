"""Large objects copied as byte ranges in parallel (the download side of multipart).

One GET stream per object is bound by what one connection gets from the store (S3 serves a
single stream at roughly 50-100 MB/s); an SDXL UNet is a 5-10 GB file. An object of at least
``storage.multipart_threshold_mb`` is therefore fetched as ranges of ``storage.multipart_chunk_mb``,
``storage.part_concurrency`` at a time, each written at its offset of a preallocated temp file:

* the first range is fetched alone: its ``Content-Range`` must give the size the listing or the
  manifest recorded, and its ETag pins the object: every other range is asked ``If-Match`` that
  ETag, so an object replaced mid-copy is refused (HTTP 412) instead of being stitched together
  from two versions;
* each range has its own retries (botocore's per call, plus a re-fetch when its body breaks off
  or comes back short);
* the file is hashed once all ranges are in, when there is a sha256 to check it against.

The caller (:func:`t2iops.storage.objects.download_entry`) still decides whether the result is
kept: it appears under its name only when size and sha256 match.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..hashing import file_digest
from .client import error_code, named_errors, storage_settings
from .transfer import bytes_reporter
from .uris import IntegrityError, StorageError

MB = 1 << 20
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True)
class RangePlan:
    threshold: int = 64 * MB  # objects at least this large are fetched in ranges
    part: int = 16 * MB  # bytes per range
    concurrency: int = 8  # ranges of one object in flight

    @classmethod
    def of(cls, cfg: Any) -> "RangePlan":
        """The plan a configuration's ``storage`` section sets (a Config, a StorageConfig or None)."""
        s = storage_settings(cfg)
        return cls(int(s["multipart_threshold_mb"] * MB), int(s["multipart_chunk_mb"] * MB), int(s["part_concurrency"]))

    def applies(self, size: Optional[int]) -> bool:
        return size is not None and size >= self.threshold and size > self.part


class _ShortBody(Exception):
    pass


def fetch_ranges(client, bucket: str, key: str, path: Path, size: int, plan: RangePlan, attempts: int,
                 broken: tuple[type, ...], want_digest: bool) -> tuple[Optional[str], int]:
    """Download ``key`` (``size`` bytes) into ``path`` in ranges; (sha256 hex or None, size)."""
    ranges = [(start, min(start + plan.part, size)) for start in range(0, size, plan.part)]
    report = bytes_reporter()  # each range counts when it is in, so a large file shows progress
    with open(path, "wb") as fh:
        fh.truncate(size)
        fd = fh.fileno()
        etag = _fetch_range(client, bucket, key, fd, ranges[0], size, None, attempts, broken)
        report(ranges[0][1] - ranges[0][0])
        if len(ranges) > 1:
            with ThreadPoolExecutor(max_workers=min(plan.concurrency, len(ranges) - 1),
                                    thread_name_prefix="t2iops-range") as pool:
                futures = [pool.submit(_fetch_range, client, bucket, key, fd, r, size, etag, attempts, broken)
                           for r in ranges[1:]]
                for future, (start, end) in zip(futures, ranges[1:]):
                    future.add_done_callback(lambda f, n=end - start: None if f.exception() else report(n))
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    if not want_digest:
        return None, size
    return file_digest(path), size


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return offset


def _fetch_range(client, bucket: str, key: str, fd: int, span: tuple[int, int], size: int,
                 etag: Optional[str], attempts: int, broken: tuple[type, ...]) -> str:
    """GET bytes ``span`` = [start, end) of ``key`` into ``fd`` at their offset; the ETag."""
    from botocore.exceptions import ClientError

    start, end = span
    where = f"s3://{bucket}/{key}"
    for attempt in range(attempts):
        args = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            args["IfMatch"] = etag
        try:
            with named_errors(client, "download", bucket, key):
                try:
                    response = client.get_object(**args)
                except ClientError as exc:
                    if error_code(exc) in ("PreconditionFailed", "412"):
                        raise StorageError(f"{where} changed while it was being copied (its ETag is no longer "
                                           f"{etag}); copy it again") from None
                    raise
            answered = CONTENT_RANGE.fullmatch(response.get("ContentRange") or "")
            if answered is None or tuple(map(int, answered.groups())) != (start, end - 1, size):
                raise IntegrityError(f"{where}: the store answered range {response.get('ContentRange')!r} for "
                                     f"bytes {start}-{end - 1} of the {size} recorded; refusing it")
            offset = start
            for chunk in response["Body"].iter_chunks(MB):
                if offset + len(chunk) > end:  # never past its own range, whatever the store sends
                    raise IntegrityError(f"{where}: the store sent more than bytes {start}-{end - 1}; refusing it")
                offset = _pwrite_all(fd, chunk, offset)
            if offset != end:
                raise _ShortBody(f"{offset - start} of {end - start} bytes")
            return response.get("ETag", "")
        except (_ShortBody, *broken) as exc:
            if attempt == attempts - 1:
                raise StorageError(f"cannot download {where} bytes {start}-{end - 1}: the body broke off "
                                   f"{attempts} times: {exc}") from None
    raise AssertionError("unreachable")
