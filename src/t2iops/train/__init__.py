"""The adapter trainer (``t2iops train``)."""


def train(cache_dir, out, cfg, resume=None):
    """See :func:`t2iops.train.trainer.train` (imported lazily: it needs torch)."""
    from .trainer import train as _train

    return _train(cache_dir, out, cfg, resume=resume)
