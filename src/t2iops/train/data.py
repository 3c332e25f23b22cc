"""Batches from the cache, in an order and with randomness that resumes exactly.

* Order: each epoch is a permutation of the train split drawn from ``(train.seed, epoch)``,
  shard-aware so a streamed cache reads few shards at a time: the latent shards are shuffled,
  taken ``train.shuffle_window`` at a time, and the samples of each window shuffled together.
* Buckets: samples of different aspect-ratio buckets have latents of different shapes, so a
  micro-batch holds one bucket only. The permutation is walked from the front; each bucket
  collects its samples as they come, and a bucket's global micro-batch of ``train.batch_size``
  is due when its last sample is reached. With one bucket this cuts the permutation into
  consecutive batches, exactly as before buckets existed.
* Remainders: what a bucket holds at the end of the epoch (fewer samples than a batch) is left
  out of that epoch, and counted (logged at start, ``summary.json``). The next epoch's
  permutation is a fresh draw, so a different few are left out each time and every sample of a
  bucket with at least one batch is trained on; a bucket smaller than one batch never is, which
  the log says. Leaving them out keeps an epoch a pure function of ``(train.seed, epoch)``:
  carrying them into the next epoch would make each epoch depend on the one before (a resume
  would have to replay the run from epoch 0), and padding with repeats would train the smallest
  buckets hardest and change the one-bucket order runs had before buckets.
* Ranks: rank ``r`` of ``W`` takes the ``r``-th slice of each global micro-batch, so the global
  batches are the same for every world size. The number of micro-batches per epoch does not
  depend on the permutation (``sum(samples // batch_size)`` over buckets), so a position in the
  run is just ``(epoch, batch)``, which is what checkpoints store.
* Randomness: every sample's flip, caption dropout, timestep, noise and posterior draw come
  from a generator seeded by ``(train.seed, epoch, position in the epoch's permutation)``. The
  same global batch gets the same draws whatever the world size or the point a run was resumed
  at, and caption dropout is re-drawn every epoch (never baked into the cache).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import ConfigError
from ..data.buckets import bucket_name
from ..encode.cache import CacheReader
from ..hashing import raw_digest


def draw_seed(seed: int, epoch: int, position: int) -> int:
    digest = raw_digest(f"{seed}/{epoch}/{position}".encode())
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are < 2**63


def epoch_order(shard_members: list[torch.Tensor], seed: int, epoch: int, window: int) -> torch.Tensor:
    """Sample positions of one epoch: ``shard_members[k]`` are the samples stored in shard ``k``."""
    generator = torch.Generator().manual_seed(draw_seed(seed, epoch, -1))
    shards = torch.randperm(len(shard_members), generator=generator).tolist()
    order = []
    for start in range(0, len(shards), window):
        members = torch.cat([shard_members[k] for k in shards[start:start + window]])
        order.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(order)


def shard_members(reader: CacheReader) -> list[torch.Tensor]:
    shard_of = torch.tensor([reader.latent_shard_of(i) for i in range(len(reader))])
    return [m for m in (torch.nonzero(shard_of == s).flatten() for s in torch.unique(shard_of)) if len(m)]


def sample_buckets(reader: CacheReader) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The cache's buckets ``(height, width)`` and every sample's index into them (a cache
    written before buckets existed is one square bucket)."""
    buckets = [tuple(b) for b in reader.buckets]
    return buckets, torch.tensor([reader.bucket_of(i) for i in range(len(reader))], dtype=torch.long)


def bucket_batches(order: torch.Tensor, labels: torch.Tensor, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's global micro-batches: row ``k`` of the first tensor holds the positions in
    ``order`` of batch ``k``'s samples, the second its bucket (``labels[i]``: sample ``i``'s).
    Each bucket takes its samples in the order's sequence; a batch is due when its last sample
    is reached, and what a bucket holds at the end (fewer than a batch) is left out."""
    in_order = labels[order]
    rows, owners = [torch.empty(0, global_batch, dtype=torch.long)], [torch.empty(0, dtype=torch.long)]
    for bucket in torch.unique(in_order).tolist():
        positions = torch.nonzero(in_order == bucket).flatten()
        full = len(positions) // global_batch
        rows.append(positions[:full * global_batch].view(full, global_batch))
        owners.append(torch.full((full,), bucket, dtype=torch.long))
    rows, owners = torch.cat(rows), torch.cat(owners)
    due = torch.argsort(rows[:, -1])
    return rows[due], owners[due]


class EpochBatches:
    """The global micro-batches of every epoch, each from one bucket: a pure function of the
    cache, ``seed``, ``global_batch`` and ``window``, computed per epoch on demand."""

    def __init__(self, reader: CacheReader, global_batch: int, seed: int, window: int = 4):
        self.global_batch, self.seed, self.window = global_batch, seed, window
        self.buckets, self.labels = sample_buckets(reader)
        self.shard_members = shard_members(reader)
        self.samples = torch.bincount(self.labels, minlength=len(self.buckets)).tolist()  # per bucket
        self.per_epoch = [n // global_batch for n in self.samples]  # micro-batches of each bucket, every epoch
        self.batches_per_epoch = sum(self.per_epoch)
        if not self.batches_per_epoch:
            sizes = ", ".join(f"{bucket_name(b)}: {n}" for b, n in zip(self.buckets, self.samples))
            raise ConfigError(f"train.batch_size={global_batch} is larger than every bucket of the cache's train "
                              f"split ({sizes} samples); a micro-batch holds one bucket")
        self._epochs: dict[int, tuple] = {}  # two epochs: a streaming sampler looks ahead

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(order, batches, bucket of each batch)`` of ``epoch`` (see :func:`bucket_batches`)."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            order = epoch_order(self.shard_members, self.seed, epoch, self.window)
            self._epochs[epoch] = (order, *bucket_batches(order, self.labels, self.global_batch))
        return self._epochs[epoch]

    def micro_batches(self, stop: tuple[int, int]) -> list[int]:
        """Micro-batches of each bucket a run draws before position ``stop`` = ``(epoch, batch)``."""
        epoch, batch = stop
        counts = torch.tensor(self.per_epoch, dtype=torch.long) * epoch
        if batch:
            counts += torch.bincount(self.epoch(epoch)[2][:batch], minlength=len(self.buckets))
        return counts.tolist()

    def position_after(self, micro_batches: int) -> tuple[int, int]:
        """The position ``(epoch, batch)`` after a run's first ``micro_batches``."""
        return divmod(micro_batches, self.batches_per_epoch)

    def report(self, stop: tuple[int, int]) -> list[dict]:
        """Per bucket: its samples, its micro-batches per epoch, the samples it leaves out of each
        epoch, and the micro-batches a run draws from it before position ``stop``."""
        drawn = self.micro_batches(stop)
        return [{"bucket": bucket_name(b), "height": b[0], "width": b[1], "samples": n,
                 "micro_batches_per_epoch": k, "left_out_per_epoch": n - k * self.global_batch, "micro_batches": d}
                for b, n, k, d in zip(self.buckets, self.samples, self.per_epoch, drawn)]


class MicroBatches(Dataset):
    """``dataset[(epoch, batch)]`` is this rank's share of global micro-batch ``batch`` of
    ``epoch``, collated, with its per-sample random draws."""

    def __init__(self, reader: CacheReader, global_batch: int, rank: int, world_size: int, seed: int,
                 caption_dropout: float, uncond: dict, flip: bool, window: int = 4,
                 batches: Optional[EpochBatches] = None):
        self.reader = reader
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.caption_dropout = caption_dropout
        self.uncond = uncond  # embeddings a dropped caption is replaced by
        self.flip = flip and reader.has_flip
        self.batches = batches if batches is not None else EpochBatches(reader, global_batch, seed, window)
        self.batches_per_epoch = self.batches.batches_per_epoch

    def __len__(self) -> int:  # only meaningful per epoch; the sampler is what runs forever
        return self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return self.batches.epoch(epoch)[0]

    def positions(self, key: tuple[int, int]) -> list[int]:
        """Positions in the epoch's permutation of this rank's samples of micro-batch ``key``."""
        row = self.batches.epoch(key[0])[1][key[1]]
        return row[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()

    def files_for(self, key: tuple[int, int]) -> list[str]:
        """Cache files (relative paths) this rank reads for micro-batch ``key``."""
        order = self._epoch_order(key[0])
        return sorted({f for p in self.positions(key) for f in self.reader.files_of(int(order[p]))})

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, batch = key
        order = self._epoch_order(epoch)
        samples = [self._sample(int(order[p]), epoch, p) for p in self.positions(key)]
        out = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        out["epoch"], out["batch"] = epoch, batch
        return out

    def _sample(self, index: int, epoch: int, position: int) -> dict:
        g = torch.Generator().manual_seed(draw_seed(self.seed, epoch, position))
        # Always the same draws in the same order, so switching one option on does not
        # change the noise every other option sees.
        flip_u, drop_u, t_u = torch.rand(3, generator=g).tolist()
        flipped = self.flip and flip_u < 0.5
        dropped = drop_u < self.caption_dropout
        cached = self.reader.sample(index, flipped=flipped)
        latent = cached["latent"].float()
        channels = latent.shape[0] // 2 if self.reader.latent_kind == "sample" else latent.shape[0]
        shape = (channels, *latent.shape[1:])
        item = {
            "latents": latent,
            "noise": torch.randn(shape, generator=g),
            "u": torch.tensor(t_u),
            "conditions": cached["condition"],
            "dropped": torch.tensor(dropped),
            "flipped": torch.tensor(flipped),
        }
        if self.reader.latent_kind == "sample":
            item["latent_eps"] = torch.randn(shape, generator=g)
        text = self.uncond if dropped else cached
        item["prompt_embeds"] = text["prompt_embeds"].float()
        if "pooled_prompt_embeds" in cached:
            item["pooled_prompt_embeds"] = text["pooled_prompt_embeds"].float()
            item["time_ids"] = cached["time_ids"].float()
        return item


class ResumableOrder(Sampler):
    """``(epoch, batch)`` keys from a starting position on, forever."""

    def __init__(self, batches_per_epoch: int, start_epoch: int = 0, start_batch: int = 0):
        self.batches_per_epoch = batches_per_epoch
        self.start = (start_epoch, start_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = self.start
        while True:
            yield epoch, batch
            batch += 1
            if batch == self.batches_per_epoch:
                epoch, batch = epoch + 1, 0


def uncond_embeddings(reader: CacheReader) -> dict:
    """What a dropped caption becomes: SDXL base samples its unconditional branch from zero
    embeddings (``force_zeros_for_empty_prompt``), so dropout must teach zeros there; other
    models use the empty prompt's embeddings."""
    empty = reader.empty_prompt()
    if reader.index.get("force_zeros_for_empty_prompt"):
        return {k: torch.zeros_like(v) for k, v in empty.items()}
    return empty


def train_loader(reader: CacheReader, train_cfg, rank: int, world_size: int, start=(0, 0),
                 fetcher=None, batches: Optional[EpochBatches] = None) -> DataLoader:
    """Micro-batches from ``start`` on. ``fetcher`` (a :class:`t2iops.train.streaming.ShardFetcher`)
    streams the shards each batch needs before the batch is handed to a worker; ``batches``: the
    run's :class:`EpochBatches` when the caller already built them."""
    dataset = MicroBatches(reader, train_cfg.batch_size, rank, world_size, train_cfg.seed,
                           train_cfg.caption_dropout, uncond_embeddings(reader), flip=True,
                           window=train_cfg.shuffle_window, batches=batches)
    order = ResumableOrder(dataset.batches_per_epoch, *start)
    if fetcher is not None:
        from .streaming import StreamingOrder

        in_flight = max(1, train_cfg.num_workers) * 2 + 2  # keys the DataLoader may hold unprocessed
        order = StreamingOrder(order, dataset, fetcher, in_flight, train_cfg.stream_prefetch)
    return DataLoader(
        dataset,
        sampler=order,
        batch_size=None,  # the dataset returns whole micro-batches
        num_workers=train_cfg.num_workers,
        persistent_workers=train_cfg.num_workers > 0,
        prefetch_factor=2 if train_cfg.num_workers > 0 else None,
    )
