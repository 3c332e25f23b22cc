"""Batch order and per-sample randomness: independent of world size, resumable, and caption
dropout re-drawn every epoch; streamed caches give the same batches. Uses a small hand-written
cache (no models needed)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from t2iops import storage
from t2iops.config import load_config
from t2iops.errors import DataError
from t2iops.train.streaming import open_cache

from t2iops.encode.cache import CACHE_FORMAT, EMPTY_PROMPT, PART, CacheReader
from t2iops.encode.encode import ShardWriter
from t2iops.train.data import MicroBatches, ResumableOrder, train_loader, uncond_embeddings


def write_fake_cache(root, n=12, flip=True, shard_size=5, sdxl=True, zeros_uncond=False):
    """A cache with recognisable values: sample i's latents are all i, its flipped latents -i,
    its caption embedding i+100, the empty prompt's 7."""
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
    index = {"format": CACHE_FORMAT, "family": "sdxl" if sdxl else "sd15", "dataset_version": "v",
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
