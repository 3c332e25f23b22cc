"""Train stage: the adapter trainer, in this pod or as a multi-node job it launches and awaits.
Wraps :func:`t2iops.train.train` through :mod:`t2iops.pipelines.steps`.

Checkpoints live under ``<run_root>/<key>/train`` (S3 in a cluster), the key a digest of the
step's output artifact URI, which KFP keeps when it retries the step: a retried step, e.g. after a
preempted node, resumes from the latest one (``--resume latest``). The run id is not an input:
it would change every run and defeat KFP's cache."""
from kfp.dsl import Dataset, Input, Metrics, Model, Output


def train_adapter(cache: Input[Dataset], config: str, run_root: str, model: Output[Model], metrics: Output[Metrics]):
    """One pod (one process per visible GPU). model: adapter/, summary.json, config.resolved.yaml."""
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.kfp_metrics import log_metrics, training_metrics
    from t2iops.pipelines.steps import step_key, train_in_pod

    cfg = stage_config(config, "train")
    summary = train_in_pod(cache.path, model.path, cfg, run_root=run_root, run_key=step_key(model.uri))
    log_metrics(metrics, training_metrics(summary))


def train_adapter_multinode(
    cache: Input[Dataset],
    config: str,
    run_root: str,
    nodes: int,
    gpus_per_node: int,
    launcher_settings: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Creates a TrainJob (DeepSpeed runtime) or PyTorchJob of nodes x gpus_per_node, waits for it,
    then fetches the adapter. The cache must be on S3 (an s3:// pipeline root)."""
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.kfp_metrics import log_metrics, training_metrics
    from t2iops.pipelines.steps import step_key, train_distributed

    cfg = stage_config(config, "train")
    summary = train_distributed(
        cache.uri, model.path, cfg, run_root=run_root, run_key=step_key(model.uri), nodes=nodes,
        gpus_per_node=gpus_per_node, settings_json=launcher_settings,
    )
    log_metrics(metrics, training_metrics(summary))
