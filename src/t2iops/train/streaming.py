"""Streaming a cache from storage: training starts when the shards of its first batches are
local, not after the whole cache (173 GB for fill50k at 1024 px in format 1).

The epoch order is known in advance (:mod:`t2iops.train.data`), so the sampler, which runs in
the main process, knows which shard files every coming micro-batch reads. Before it hands a
batch to a worker it waits for that batch's files and queues the files of the next
``train.stream_prefetch`` batches on a thread pool. Every file is checked against the cache's
manifest (size and sha256) before it becomes visible under its name. Files no longer needed by
the batches in flight or ahead are evicted, oldest first, once the local copy exceeds
``train.stream_disk_gb``. What a batch contains never depends on timing, so results (and resume)
are exactly those of a fully downloaded cache.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from torch.utils.data import Sampler

from .. import storage
from ..errors import DataError
from ..hashing import bytes_digest

log = logging.getLogger(__name__)

SMALL_FILES = ("cache.json", "config.resolved.yaml")  # plus every part.json and empty prompt


def fetch_verified(uri: str, rel: str, dest: Path, manifest: dict, cfg=None) -> int:
    """Download ``uri/rel`` to ``dest`` if its size and sha256 match the cache's ``manifest``;
    the file appears under its name only when complete and verified."""
    try:
        return storage.download_listed(uri, manifest, rel, dest, cfg)
    except storage.IntegrityError as exc:
        raise DataError(f"{storage.join(uri, rel)} does not match the cache manifest ({exc}); the cache changed "
                        "or is corrupt") from None


class ShardFetcher:
    """Files of one cache fetched on demand into ``local`` with a byte budget."""

    def __init__(self, uri: str, local: Path, manifest: dict, cfg=None, budget_bytes: float = 50e9,
                 threads: int = 8):
        self.uri, self.local, self.cfg = str(uri), Path(local), cfg
        self.manifest = manifest
        self.files: dict = manifest["files"]
        self.budget = budget_bytes
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="t2iops-stream")
        self._pending: dict[str, Future] = {}
        self._local: OrderedDict[str, int] = OrderedDict()  # rel -> bytes, least recently needed first
        self._lock = threading.Lock()
        self.fetched_bytes = 0
        self.pinned: set = set()
        self.evicted = 0

    def _entry(self, rel: str) -> dict:
        entry = self.files.get(rel)
        if entry is None:
            raise DataError(f"{self.uri}: {rel} is not listed in the cache manifest")
        return entry

    def prefetch(self, rels, force: bool = False) -> None:
        """Queue downloads of ``rels`` (in order) unless present, pending, or (unless ``force``)
        over budget."""
        for rel in rels:
            with self._lock:
                if rel in self._local or rel in self._pending:
                    continue
                if not force and self.local_bytes() + self._entry(rel)["bytes"] > self.budget and self._pending:
                    return  # what is queued must land (and old files go) before more is fetched
                self._entry(rel)  # listed, or a clear error here rather than in a worker thread
                self._pending[rel] = self._pool.submit(fetch_verified, self.uri, rel, self.local / rel,
                                                       self.manifest, self.cfg)

    def wait(self, rels, pin: bool = False) -> list[Path]:
        """The local paths of ``rels``, fetching what is missing; marks them recently needed.
        ``pin``: never evict them (index files, the validation split)."""
        self.prefetch(rels, force=True)
        if pin:
            self.pinned.update(rels)
        for rel in rels:
            with self._lock:
                future = self._pending.get(rel)
            if future is not None:
                size = future.result()
                with self._lock:
                    self._pending.pop(rel, None)
                    self._local[rel] = size
                    self.fetched_bytes += size
            with self._lock:
                self._local.move_to_end(rel)
        return [self.local / rel for rel in rels]

    def local_bytes(self) -> int:
        return sum(self._local.values())

    def evict(self, keep: set) -> None:
        """Delete the least recently needed files not in ``keep`` until under budget."""
        with self._lock:
            for rel in list(self._local):
                if self.local_bytes() <= self.budget:
                    return
                if rel in keep or rel in self.pinned:
                    continue
                (self.local / rel).unlink(missing_ok=True)
                del self._local[rel]
                self.evicted += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class StreamingOrder(Sampler):
    """Wraps the resumable ``(epoch, batch)`` order: a key is yielded only once the files of its
    batch are local; the files of the next batches are fetched meanwhile."""

    def __init__(self, order, dataset, fetcher: ShardFetcher, in_flight: int, prefetch: int = 8):
        self.order, self.dataset, self.fetcher = order, dataset, fetcher
        self.in_flight, self.prefetch = in_flight, prefetch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = iter(self.order)
        ahead: deque = deque()  # (key, files) of the batches whose files are being fetched
        recent: deque = deque(maxlen=self.in_flight)  # files of keys handed out, maybe not yet read
        while True:
            while len(ahead) <= self.prefetch:
                key = next(keys)
                ahead.append((key, self.dataset.files_for(key)))
            key, files = ahead.popleft()
            self.fetcher.wait(files)  # the batch due now gets all the bandwidth first...
            for _, later in ahead:  # ...then the next ones are queued, in order
                self.fetcher.prefetch(later)
            recent.append(files)
            self.fetcher.evict({f for fs in recent for f in fs} | {f for _, fs in ahead for f in fs})
            yield key


@dataclass
class OpenedCache:
    root: Path  # the local folder the cache reader opens
    fetcher: Optional[ShardFetcher] = None  # set when streaming

    def fetch_split(self, reader) -> None:
        """Fetch every file one split reads (validation: small, read whole every time)."""
        if self.fetcher is not None:
            self.fetcher.wait(sorted({f for i in range(len(reader)) for f in reader.files_of(i)}), pin=True)


def open_cache(uri: str, cfg, rank: int = 0) -> OpenedCache:
    """The cache at ``uri`` for training: downloaded whole (``materialize``), or, when streaming
    (``train.stream``; auto = s3://), its index and small files only, shards on demand."""
    mode = cfg.train.stream
    if mode == "never" or (mode == "auto" and not storage.is_s3(uri)):
        return OpenedCache(storage.materialize(uri, cfg.storage, kind="caches"))
    manifest = storage.read_manifest(uri, cfg.storage)
    tag = bytes_digest(f"{uri}\n{manifest.get('created')}\n{sorted(manifest['files'].items())}".encode(), 20)
    local = storage.cache_root(cfg.storage) / "streams" / f"{tag}-rank{rank}"
    if local.exists():  # files of an earlier run: not re-verified, so start clean
        shutil.rmtree(local)
    fetcher = ShardFetcher(uri, local, manifest, cfg.storage, budget_bytes=cfg.train.stream_disk_gb * 1e9)
    small = [rel for rel in manifest["files"] if rel in SMALL_FILES or rel.endswith(("/part.json", "/empty.safetensors"))]
    fetcher.wait(small, pin=True)
    # The manifest beside the streamed files, as a whole download has it: the run specification
    # (resume auto) hashes the cache by its recorded sha256s in either mode.
    (local / storage.MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("streaming cache %s into %s (budget %.1f GB)", uri, local, cfg.train.stream_disk_gb)
    return OpenedCache(local, fetcher)
