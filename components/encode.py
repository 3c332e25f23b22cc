"""Encode stage: latent + text-embedding cache of the validated rows, one component per shard
(run in a ParallelFor, one GPU each) and one that merges the slices into the cache. Wraps
:func:`t2iops.encode.sharded.encode_shard` and :func:`t2iops.encode.sharded.merge_shards`.

Slices are published under ``<run_root>/<key>/encode/`` (the key a digest of the data and
configuration they encode) and handed to the merge by URI, as the evaluation shards are. The
merged cache equals a one-process encode, file for file."""
from typing import List

from kfp.dsl import Dataset, Input, Output


def encode_shard(
    dataset: Input[Dataset],
    validated: Input[Dataset],
    config: str,
    shard_index: int,
    shards: List[int],
    run_root: str,
) -> str:
    """Encodes slice shard_index of len(shards) (whole cache shards of model.base_model's VAE
    latents and text embeddings); returns the slice's URI."""
    from t2iops.encode.sharded import encode_shard as encode
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import check_shards, shard_uri, step_key

    cfg = stage_config(config, "encode")
    count = check_shards(shards, "encode_shards")
    out = shard_uri(run_root, step_key(dataset.uri, validated.uri, config), shard_index, count, stage="encode")
    encode(dataset.path, validated.path, out, cfg, (shard_index, count))
    return out


def merge_cache(slice_uris: List[str], config: str, cache: Output[Dataset]):
    """Joins every slice into the sharded safetensors cache the training step reads."""
    from t2iops.encode.sharded import merge_shards
    from t2iops.pipelines.runtime import stage_config

    cfg = stage_config(config, "encode")
    merge_shards(list(slice_uris), cache.path, cfg)
