"""Encode stage: latent + text-embedding cache of the validated rows. Wraps
:func:`t2iops.encode.encode.encode_dataset`."""
from kfp.dsl import Dataset, Input, Output

from . import component


@component
def encode_dataset(dataset: Input[Dataset], validated: Input[Dataset], config: str, cache: Output[Dataset]):
    """Writes the sharded safetensors cache of model.base_model's VAE latents and text embeddings."""
    from t2iops.encode.encode import encode_dataset as encode
    from t2iops.pipelines.runtime import stage_config

    cfg = stage_config(config, "encode")
    encode(dataset.path, validated.path, cache.path, cfg)
