"""Train stage: the adapter trainer, in this pod or as a multi-node job it launches and awaits.
Wraps :func:`t2iops.train.train` through :mod:`t2iops.pipelines.steps`.

Checkpoints live under ``<run_root>/<run_id>/train`` (S3 in a cluster): a retried step, e.g.
after a preempted node, resumes from the latest one (``--resume latest``)."""
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from . import component


@component
def train_adapter(cache: Input[Dataset], config: str, run_root: str, run_id: str, model: Output[Model], metrics: Output[Metrics]):
    """One pod (one process per visible GPU). model: adapter/, summary.json, config.resolved.yaml."""
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import log_metrics, train_in_pod

    cfg = stage_config(config)
    summary = train_in_pod(cache.path, model.path, cfg, run_root=run_root, run_id=run_id)
    log_metrics(metrics, summary)


@component
def train_adapter_multinode(
    cache: Input[Dataset],
    config: str,
    run_root: str,
    run_id: str,
    nodes: int,
    gpus_per_node: int,
    launcher_settings: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Creates a TrainJob (DeepSpeed runtime) or PyTorchJob of nodes x gpus_per_node, waits for it,
    then fetches the adapter. The cache must be on S3 (an s3:// pipeline root)."""
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import log_metrics, train_distributed

    cfg = stage_config(config)
    summary = train_distributed(
        cache.uri, model.path, cfg, run_root=run_root, run_id=run_id, nodes=nodes,
        gpus_per_node=gpus_per_node, settings_json=launcher_settings,
    )
    log_metrics(metrics, summary)
