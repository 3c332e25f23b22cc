"""Batch order and per-sample randomness: independent of world size, resumable, and caption
dropout re-drawn every epoch; streamed caches give the same batches; every micro-batch from one
aspect-ratio bucket, and one bucket ordered exactly as before buckets existed. Uses a small
hand-written cache (no models needed)."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from t2iops import storage
from t2iops.config import load_config
from t2iops.errors import DataError
from t2iops.train.streaming import open_cache

from t2iops.encode.cache import EMPTY_PROMPT, PART, CacheReader
from t2iops.encode.encode import ShardWriter
from t2iops.config import ConfigError
from t2iops.train.data import (EpochBatches, MicroBatches, ResumableOrder, bucket_batches, train_loader,
                               uncond_embeddings)
from t2iops.train.metrics import bucket_line


def write_fake_cache(root, n=12, flip=True, shard_size=5, sdxl=True, zeros_uncond=False):
    """A cache with recognisable values: sample i's latents are all i, its flipped latents -i,
    its caption embedding i+100, the empty prompt's 7. Its layout is format 2's (one square
    bucket of its resolution)."""
    captions = [f"caption {i}" for i in range(n)]
    text_dir, latent_dir = root / "text" / "t", root / "latents" / "l"
    tw = ShardWriter(text_dir, shard_size)
    emb = {"prompt_embeds": torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 3, 4) + 100}
    if sdxl:
        emb["pooled_prompt_embeds"] = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 2) + 100
    tw.add(**{k: v.half() for k, v in emb.items()})
    tw.flush()
    empty = {k: torch.full_like(v[:1], 7.0).half() for k, v in emb.items()}
    save_file(empty, str(text_dir / EMPTY_PROMPT))
    (text_dir / PART).write_text(json.dumps({"captions": captions, "shard_size": shard_size, "shards": tw.shards,
                                             "pooled": sdxl, "family": "sdxl" if sdxl else "sd15"}))
    lw = ShardWriter(latent_dir, shard_size)
    ids = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    tensors = {
        "latent_moments": torch.cat([ids.expand(n, 4, 2, 2), torch.full((n, 4, 2, 2), -20.0)], 1).half(),
        "conditions": (torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1) + torch.arange(8, dtype=torch.uint8)).expand(n, 3, 8, 8).contiguous(),
        "time_ids": torch.tensor([[8, 8, 0, i, 8, 8] for i in range(n)], dtype=torch.int32),
    }
    if flip:
        tensors["latent_moments_flipped"] = torch.cat([-ids.expand(n, 4, 2, 2), torch.full((n, 4, 2, 2), -20.0)], 1).half()
        tensors["time_ids_flipped"] = torch.tensor([[8, 8, 0, 100 + i, 8, 8] for i in range(n)], dtype=torch.int32)
    lw.add(**tensors)
    lw.flush()
    aug = {"random_crop": False, "random_flip": flip, "crop_seed": None}
    (latent_dir / PART).write_text(json.dumps({"ids": [f"{i:03d}" for i in range(n)], "shard_size": shard_size,
                                               "shards": lw.shards, "resolution": 8, "augmentation": aug,
                                               "latents": "sample", "scaling_factor": 1.0, "shift_factor": None}))
    index = {"format": 2, "family": "sdxl" if sdxl else "sd15", "dataset_version": "v",
             "force_zeros_for_empty_prompt": zeros_uncond, "resolution": 8,
             "text": {"key": "t", "dir": "text/t"}, "latents": {"key": "l", "dir": "latents/l"},
             "samples": {"train": {"ids": [f"{i:03d}" for i in range(n)], "latent_rows": list(range(n)),
                                   "text_rows": list(range(n))}}}
    (root / "cache.json").write_text(json.dumps(index))
    return root


@pytest.fixture()
def reader(tmp_path):
    return CacheReader(write_fake_cache(tmp_path), "train")


def _samples(batch):
    return batch["latents"][:, 0, 0, 0].abs().long().tolist()


def test_reader_reads_rows_across_shards_and_flips_exactly(reader):
    s = reader.sample(7)
    assert s["latent"][0, 0, 0].item() == 7 and s["prompt_embeds"][0, 0].item() == 107
    assert s["time_ids"].tolist() == [8, 8, 0, 7, 8, 8]
    f = reader.sample(7, flipped=True)
    assert f["latent"][0, 0, 0].item() == -7
    assert f["time_ids"].tolist() == [8, 8, 0, 107, 8, 8]
    assert torch.equal(f["condition"], s["condition"].flip(-1))


def test_global_batches_do_not_depend_on_world_size(reader):
    one = MicroBatches(reader, 4, rank=0, world_size=1, seed=3, caption_dropout=0.5, uncond=uncond_embeddings(reader), flip=True)
    halves = [MicroBatches(reader, 4, rank=r, world_size=2, seed=3, caption_dropout=0.5,
                           uncond=uncond_embeddings(reader), flip=True) for r in range(2)]
    for key in [(0, 0), (0, 2), (5, 1)]:
        whole = one[key]
        parts = [h[key] for h in halves]
        for name in ("latents", "noise", "u", "prompt_embeds", "pooled_prompt_embeds", "time_ids", "conditions", "latent_eps"):
            assert torch.equal(whole[name], torch.cat([p[name] for p in parts])), name


def test_each_epoch_is_a_permutation_and_epochs_differ(reader):
    data = MicroBatches(reader, 4, 0, 1, seed=0, caption_dropout=0.0, uncond=uncond_embeddings(reader), flip=False)
    epoch0 = sum((_samples(data[(0, b)]) for b in range(3)), [])
    epoch1 = sum((_samples(data[(1, b)]) for b in range(3)), [])
    assert sorted(epoch0) == list(range(12)) == sorted(epoch1)
    assert epoch0 != epoch1


def test_caption_dropout_is_redrawn_every_epoch(reader):
    data = MicroBatches(reader, 12, 0, 1, seed=0, caption_dropout=0.5, uncond=uncond_embeddings(reader), flip=False)
    dropped_ids = []
    for epoch in range(4):
        batch = data[(epoch, 0)]
        ids = _samples(batch)
        dropped = batch["dropped"].tolist()
        # A dropped caption becomes the empty prompt's embedding, a kept one is the sample's own.
        for i, d, emb in zip(ids, dropped, batch["prompt_embeds"][:, 0, 0].tolist()):
            assert emb == (7.0 if d else 100.0 + i)
        dropped_ids.append(frozenset(i for i, d in zip(ids, dropped) if d))
        assert 0 < len(dropped_ids[-1]) < 12
    assert len(set(dropped_ids)) == 4  # a different set of captions dropped in each epoch


def test_sdxl_base_drops_captions_to_zeros(tmp_path):
    reader = CacheReader(write_fake_cache(tmp_path, zeros_uncond=True), "train")
    data = MicroBatches(reader, 12, 0, 1, seed=0, caption_dropout=1.0, uncond=uncond_embeddings(reader), flip=False)
    batch = data[(0, 0)]
    assert batch["prompt_embeds"].abs().sum() == 0 and batch["pooled_prompt_embeds"].abs().sum() == 0


def test_flips_pair_latents_conditions_and_time_ids(reader):
    data = MicroBatches(reader, 12, 0, 1, seed=1, caption_dropout=0.0, uncond=uncond_embeddings(reader), flip=True)
    batch = data[(0, 0)]
    flipped = batch["flipped"]
    assert 0 < flipped.sum() < 12
    for k in range(12):
        i = int(batch["latents"][k, 0, 0, 0].abs())
        assert (batch["latents"][k, 0, 0, 0] < 0) == flipped[k] or i == 0
        assert batch["time_ids"][k, 3].item() == (100 + i if flipped[k] else i)
        own = reader.sample(i)["condition"]
        assert torch.equal(batch["conditions"][k], own.flip(-1) if flipped[k] else own)


def test_loader_resumes_at_a_position(reader):
    from t2iops.config import TrainConfig

    t = TrainConfig(batch_size=4, caption_dropout=0.3, seed=5)
    full = iter(train_loader(reader, t, 0, 1))
    seq = [next(full) for _ in range(7)]
    resumed = iter(train_loader(reader, t, 0, 1, start=(1, 1)))  # 3 batches per epoch: step 4 is (1, 1)
    for expected in seq[4:]:
        got = next(resumed)
        assert (got["epoch"], got["batch"]) == (expected["epoch"], expected["batch"])
        assert torch.equal(got["noise"], expected["noise"]) and torch.equal(got["prompt_embeds"], expected["prompt_embeds"])
    order = ResumableOrder(3, 0, 2)
    it = iter(order)
    assert [next(it) for _ in range(3)] == [(0, 2), (1, 0), (1, 1)]


# ---------------------------------------------------------------------------------------
# Streaming: the same batches as a local cache under a tiny disk budget, shards checked
# against the manifest, and a shard-aware epoch order.
def _cfg(tmp_path, *extra):
    return load_config(overrides=["train.batch_size=4", "train.seed=5", "train.caption_dropout=0.2",
                                  f"storage.cache_dir={tmp_path / 'local'}", *extra])


@pytest.fixture()
def published(tmp_path):
    with storage.publish(tmp_path / "cache") as staging:
        write_fake_cache(staging, n=40, shard_size=5)
    return str(tmp_path / "cache")


def _batches(loader, count):
    it = iter(loader)
    return [next(it) for _ in range(count)]


def test_streamed_batches_equal_the_local_cache_under_a_tiny_disk_budget(tmp_path, published):
    cfg = _cfg(tmp_path, "train.stream=always", "train.stream_disk_gb=0.000001", "train.shuffle_window=2",
               "train.stream_prefetch=2")
    local = train_loader(CacheReader(published, "train"), cfg.train, 0, 1, start=(1, 3))
    cache = open_cache(published, cfg)
    assert cache.root != published and not list(cache.root.rglob("shard-*"))  # nothing fetched up front
    in_worker = _cfg(tmp_path, "train.shuffle_window=2", "train.stream_prefetch=2", "train.num_workers=1").train
    streamed = train_loader(CacheReader(cache.root, "train"), in_worker, 0, 1, start=(1, 3), fetcher=cache.fetcher)
    for a, b in zip(_batches(local, 25), _batches(streamed, 25)):  # 2.5 epochs, from a resumed position
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
    assert cache.fetcher.evicted > 0
    assert len(list(cache.root.rglob("latents/**/shard-*"))) <= 8  # bounded, not the whole cache


def test_a_shard_that_does_not_match_the_manifest_is_refused(tmp_path, published):
    cfg = _cfg(tmp_path, "train.stream=always")
    shard = next((tmp_path / "cache" / "latents").rglob("shard-00003.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    cache = open_cache(published, cfg)
    with pytest.raises(DataError, match="does not match the cache manifest"):
        cache.fetcher.wait(["latents/l/shard-00003.safetensors"])


def test_epoch_order_reads_one_window_of_shards_at_a_time(tmp_path, published):
    reader = CacheReader(published, "train")
    data = MicroBatches(reader, 5, 0, 1, seed=0, caption_dropout=0.0, uncond=uncond_embeddings(reader), flip=False,
                        window=1)
    shards = [{reader.latent_shard_of(int(data._epoch_order(0)[p])) for p in data.positions((0, b))} for b in range(8)]
    assert all(len(s) == 1 for s in shards) and len(set.union(*shards)) == 8  # window of one shard = one shard a batch
    assert data.files_for((0, 0))[0].startswith("latents/l/shard-")


def test_format_1_caches_are_read_and_unknown_formats_refused(tmp_path):
    """A format 1 cache (raw uint8 conditions) still trains; a newer format names the problem."""
    root = write_fake_cache(tmp_path / "old")
    index = json.loads((root / "cache.json").read_text())
    (root / "cache.json").write_text(json.dumps({**index, "format": 1}))
    assert CacheReader(root, "train").sample(3)["condition"].dtype == torch.uint8
    (root / "cache.json").write_text(json.dumps({**index, "format": 99}))
    with pytest.raises(DataError, match="cache.json: cache format 99 is not one of"):
        CacheReader(root, "train")


# ---------------------------------------------------------------------------------------
# Buckets: one bucket per micro-batch, the same for any world size, the order before buckets
# kept for one bucket, remainders left out of their epoch, exact resume.
def _order_record(reader, global_batch, world_size, window, seed, epochs):
    """(rank, epoch, batch, sample indices, positions) of every micro-batch of ``epochs``."""
    out = []
    for rank in range(world_size):
        data = MicroBatches(reader, global_batch, rank, world_size, seed, 0.0, uncond_embeddings(reader), flip=False,
                            window=window)
        for epoch in epochs:
            order = data._epoch_order(epoch)
            for batch in range(data.batches_per_epoch):
                positions = list(data.positions((epoch, batch)))
                out.append((rank, epoch, batch, [int(order[p]) for p in positions], positions))
    return out


# Recorded from the trainer as it was before buckets existed (the demo's figures were trained on
# that order): the samples of seed 3's first two epochs, batch size 4, window 4, over 40 samples
# in shards of 5 ...
BEFORE_BUCKETS = [[25, 37, 31, 1], [30, 35, 4, 38], [28, 39, 2, 0], [34, 36, 33, 26], [27, 3, 29, 32],
                  [24, 21, 6, 10], [16, 19, 22, 20], [13, 23, 15, 8], [14, 5, 9, 18], [11, 7, 12, 17],
                  [38, 39, 6, 11], [24, 5, 37, 13], [10, 7, 36, 20], [35, 23, 12, 9], [22, 14, 8, 21],
                  [3, 4, 32, 33], [30, 29, 1, 16], [18, 19, 17, 15], [0, 2, 34, 27], [25, 31, 28, 26]]
# ... and digests of every rank's samples and draw positions over a sweep of batch sizes, world
# sizes, windows and seeds, and of whole collated batches (noise, flips, dropout included).
BEFORE_BUCKETS_SWEEP = "2ea64038dd290994fc39011fe93528113bfaa8c92a570643436482268de0d2e9"
BEFORE_BUCKETS_BATCHES = "731e431aad4338a0e2b53c7a6e9ee15bbe1d5b75c6fdd33fd16596d73d44ae59"


def test_one_bucket_orders_batches_exactly_as_before_buckets(tmp_path):
    reader = CacheReader(write_fake_cache(tmp_path, n=40, shard_size=5), "train")
    assert [r[3] for r in _order_record(reader, 4, 1, 4, 3, [0, 1])] == BEFORE_BUCKETS
    sweep = hashlib.sha256()
    for batch, world, window, seed in [(4, 1, 4, 3), (4, 2, 4, 3), (8, 4, 2, 0), (6, 2, 1, 7), (5, 1, 3, 11),
                                       (40, 2, 4, 5)]:
        sweep.update(json.dumps(_order_record(reader, batch, world, window, seed, [0, 1, 2, 7])).encode())
    assert sweep.hexdigest() == BEFORE_BUCKETS_SWEEP
    batches = hashlib.sha256()
    for rank in range(2):
        data = MicroBatches(reader, 4, rank, 2, 3, 0.3, uncond_embeddings(reader), flip=True, window=2)
        for key in [(0, 0), (0, 9), (3, 4)]:
            got = data[key]
            for name in sorted(got):
                value = got[name]
                batches.update(name.encode())
                batches.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else str(value).encode())
    assert batches.hexdigest() == BEFORE_BUCKETS_BATCHES


class BucketedReader(CacheReader):
    """The fake cache with buckets: sample ``i`` in bucket ``labels[i]``."""

    def __init__(self, root, labels, buckets=((8, 8), (8, 16), (16, 8))):
        self.labels, self.fake_buckets = list(labels), [tuple(b) for b in buckets]
        super().__init__(root, "train")

    @property
    def buckets(self):
        return self.fake_buckets

    @buckets.setter
    def buckets(self, value):  # the cache's own list, whether a property or set on construction
        pass

    def bucket_of(self, i: int) -> int:
        return self.labels[i]


# 40 samples: 17 square, 14 wide, 6 tall, 3 in a bucket smaller than a batch of 4.
LABELS = [0, 1, 0, 2, 0, 1, 1, 0, 3, 0, 2, 0, 1, 0, 1, 0, 2, 1, 0, 0,
          1, 3, 0, 1, 2, 0, 1, 0, 1, 3, 0, 1, 2, 0, 1, 0, 1, 2, 0, 1]
BUCKETS = ((8, 8), (8, 16), (16, 8), (16, 16))


@pytest.fixture()
def bucketed(tmp_path):
    return BucketedReader(write_fake_cache(tmp_path, n=40, shard_size=5), LABELS, BUCKETS)


def test_every_micro_batch_holds_one_bucket_and_remainders_are_left_out(bucketed):
    data = MicroBatches(bucketed, 4, 0, 1, seed=2, caption_dropout=0.0, uncond=uncond_embeddings(bucketed), flip=False)
    assert data.batches.samples == [17, 14, 6, 3] and data.batches.per_epoch == [4, 3, 1, 0]
    assert data.batches_per_epoch == 8
    seen_epochs = []
    for epoch in range(3):
        seen = []
        for batch in range(data.batches_per_epoch):
            ids = _samples(data[(epoch, batch)])
            assert len({LABELS[i] for i in ids}) == 1, ids
            seen += ids
        counts = [sum(LABELS[i] == b for i in seen) for b in range(4)]
        assert len(set(seen)) == len(seen) and counts == [16, 12, 4, 0]  # n - n % 4 of each; bucket 3 never
        seen_epochs.append(frozenset(seen))
    assert len(set(seen_epochs)) == 3  # a different few left out each epoch


def test_bucket_batches_are_due_when_their_last_sample_is_reached():
    order = torch.tensor([5, 0, 3, 1, 4, 2, 6])
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0])  # in order: 0 0 1 1 1 0 0
    rows, owners = bucket_batches(order, labels, 2)
    assert rows.tolist() == [[0, 1], [2, 3], [5, 6]] and owners.tolist() == [0, 1, 0]  # position 4 left out


def test_bucketed_global_batches_do_not_depend_on_world_size(bucketed):
    uncond = uncond_embeddings(bucketed)
    one = MicroBatches(bucketed, 4, 0, 1, seed=3, caption_dropout=0.5, uncond=uncond, flip=True)
    halves = [MicroBatches(bucketed, 4, r, 2, seed=3, caption_dropout=0.5, uncond=uncond, flip=True) for r in range(2)]
    quarters = [MicroBatches(bucketed, 4, r, 4, seed=3, caption_dropout=0.5, uncond=uncond, flip=True)
                for r in range(4)]
    for key in [(0, 0), (0, 7), (4, 3)]:
        whole = one[key]
        for split in (halves, quarters):
            parts = [h[key] for h in split]
            for name in ("latents", "noise", "u", "prompt_embeds", "time_ids", "conditions", "latent_eps", "flipped"):
                assert torch.equal(whole[name], torch.cat([p[name] for p in parts])), name


def test_the_bucketed_order_is_a_pure_function_of_seed_and_epoch(bucketed):
    a = EpochBatches(bucketed, 4, seed=9, window=2)
    b = EpochBatches(bucketed, 4, seed=9, window=2)
    for epoch in (0, 1, 2, 3):
        a.epoch(epoch)
    for epoch in (3, 0, 2):  # another sequence of look-ups, another cache of epochs
        assert all(torch.equal(x, y) for x, y in zip(a.epoch(epoch), b.epoch(epoch)))
    assert not torch.equal(a.epoch(0)[1], a.epoch(1)[1])


def test_a_bucketed_run_resumes_at_a_position_exactly(bucketed):
    from t2iops.config import TrainConfig

    t = TrainConfig(batch_size=4, caption_dropout=0.3, seed=5, shuffle_window=2)
    full = iter(train_loader(bucketed, t, 0, 1))
    seq = [next(full) for _ in range(20)]  # 8 batches per epoch: two and a half epochs
    for start in (5, 8, 13):  # mid-epoch, at an epoch boundary, in the next epoch
        resumed = iter(train_loader(bucketed, t, 0, 1, start=divmod(start, 8)))
        for expected in seq[start:]:
            got = next(resumed)
            for k in expected:
                assert torch.equal(torch.as_tensor(got[k]), torch.as_tensor(expected[k])), (start, k)


def test_micro_batches_per_bucket_are_counted_from_the_order(bucketed):
    batches = EpochBatches(bucketed, 4, seed=1, window=4)
    keys = [(e, b) for e in range(3) for b in range(8)][:19]  # up to (2, 3)
    drawn = [0] * 4
    for e, b in keys:
        drawn[int(batches.epoch(e)[2][b])] += 1
    assert batches.position_after(19) == (2, 3) and batches.micro_batches((2, 3)) == drawn
    assert batches.micro_batches((2, 0)) == [8, 6, 2, 0]
    report = batches.report((2, 3))
    assert [r["left_out_per_epoch"] for r in report] == [1, 2, 2, 3]
    assert [r["bucket"] for r in report] == ["8x8", "8x16", "16x8", "16x16"]
    line = bucket_line({**report[0], "micro_batches": 5}, 4, 2, 40)
    assert line == ("bucket 8x8: 17 samples, 4 micro-batches per epoch (1 left out of each epoch), "
                    "2.5 of 40 optimizer steps")
    assert bucket_line(report[3], 4, 1, 40) == "bucket 16x16: 3 samples, fewer than one batch of 4: never trained on"
    assert bucket_line({**report[3], "samples": 0, "left_out_per_epoch": 0}, 4, 1, 40) == "bucket 16x16: no samples"


def test_a_batch_larger_than_every_bucket_is_refused(tmp_path):
    reader = BucketedReader(write_fake_cache(tmp_path, n=12), [i % 3 for i in range(12)])
    with pytest.raises(ConfigError, match=r"train.batch_size=5 is larger than every bucket .*8x8: 4, 8x16: 4"):
        EpochBatches(reader, 5, seed=0)


def test_a_cache_without_buckets_is_one_square_bucket(reader):
    batches = EpochBatches(reader, 4, seed=0)
    assert batches.buckets == [(8, 8)] and batches.samples == [12] and batches.per_epoch == [3]
