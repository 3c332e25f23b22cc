"""Batches from the cache, in an order and with randomness that resumes exactly.

* Order: each epoch is a permutation of the train split drawn from ``(train.seed, epoch)``,
  shard-aware so a streamed cache reads few shards at a time: the latent shards are shuffled,
  taken ``train.shuffle_window`` at a time, and the samples of each window shuffled together. The
  epoch is cut into global micro-batches of ``train.batch_size`` (the incomplete tail is
  dropped) and rank ``r`` of ``W`` takes the ``r``-th slice of each. A position in the run is
  just ``(epoch, batch)``, which is what checkpoints store.
* Randomness: every sample's flip, caption dropout, timestep, noise and posterior draw come
  from a generator seeded by ``(train.seed, epoch, position in epoch)``. The same global batch
  gets the same draws whatever the world size or the point a run was resumed at, and caption
  dropout is re-drawn every epoch (never baked into the cache).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class MicroBatches(Dataset):
    """``dataset[(epoch, batch)]`` is this rank's share of global micro-batch ``batch`` of
    ``epoch``, collated, with its per-sample random draws."""

    def __init__(self, reader: CacheReader, global_batch: int, rank: int, world_size: int, seed: int,
                 caption_dropout: float, uncond: dict, flip: bool, window: int = 4):
        self.reader = reader
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.caption_dropout = caption_dropout
        self.uncond = uncond  # embeddings a dropped caption is replaced by
        self.flip = flip and reader.has_flip
        self.batches_per_epoch = len(reader) // global_batch
        self.window = window
        self.shard_members = shard_members(reader)
        self._orders: dict[int, torch.Tensor] = {}  # two epochs: a streaming sampler looks ahead

    def __len__(self) -> int:  # only meaningful per epoch; the sampler is what runs forever
        return self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.shard_members, self.seed, epoch, self.window)
        return self._orders[epoch]

    def positions(self, key: tuple[int, int]) -> range:
        """Positions in the epoch of this rank's samples of micro-batch ``key``."""
        first = key[1] * self.global_batch + self.rank * self.per_rank
        return range(first, first + self.per_rank)

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
                 fetcher=None) -> DataLoader:
    """Micro-batches from ``start`` on. ``fetcher`` (a :class:`t2iops.train.streaming.ShardFetcher`)
    streams the shards each batch needs before the batch is handed to a worker."""
    dataset = MicroBatches(reader, train_cfg.batch_size, rank, world_size, train_cfg.seed,
                           train_cfg.caption_dropout, uncond_embeddings(reader), flip=True,
                           window=train_cfg.shuffle_window)
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
