"""Evaluate stage: one component per shard (run in a ParallelFor), one that merges the shards
and applies the gate. Wraps :func:`t2iops.evaluate.stage.evaluate_shard` and
:func:`t2iops.evaluate.stage.merge_shards`.

Shards are published under ``<run_root>/<key>/evaluate/`` (the key a digest of the model, data
and configuration the shard evaluates) and handed to the merge by URI."""
from typing import List

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate_shard(
    model: Input[Model],
    dataset: Input[Dataset],
    validated: Input[Dataset],
    config: str,
    shard_index: int,
    shards: List[int],
    run_root: str,
) -> str:
    """Samples shard_index of len(shards) with and without the adapter; returns the shard's URI."""
    from t2iops.evaluate.stage import evaluate_shard as evaluate
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import check_shards, shard_uri, step_key

    cfg = stage_config(config, "evaluate")
    count = check_shards(shards)
    key = step_key(model.uri, dataset.uri, validated.uri, config)
    out = shard_uri(run_root, key, shard_index, count)
    evaluate(model.path, dataset.path, validated.path, out, cfg, shard=(shard_index, count))
    return out


def merge_evaluation(
    shard_uris: List[str],
    config: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
) -> bool:
    """metrics.json, samples, grid and report from all shards; returns whether the gate passed."""
    from t2iops.evaluate.stage import merge_shards
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.kfp_metrics import evaluation_metrics, log_metrics
    from t2iops.pipelines.steps import copy_report

    cfg = stage_config(config, "evaluate")
    result = merge_shards(list(shard_uris), evaluation.path, cfg, gate=False)
    log_metrics(metrics, evaluation_metrics(result))
    copy_report(evaluation.path, "report.html", report.path)
    copy_report(evaluation.path, "report.md", summary.path)
    return bool(result["gate"]["passed"])
