"""The latent + text-embedding cache (``t2iops encode``)."""


def encode_dataset(data_root, validated_dir, out, cfg):
    """See :func:`t2iops.encode.encode.encode_dataset` (imported lazily: it needs torch)."""
    from .encode import encode_dataset as _encode_dataset

    return _encode_dataset(data_root, validated_dir, out, cfg)
