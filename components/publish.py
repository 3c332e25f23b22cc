"""Publish stage: copy the export, its metrics and lineage to the model registry prefix (S3).
Wraps :func:`t2iops.pipelines.registry.publish_model`."""
from kfp.dsl import Artifact, Dataset, Input, Model


def publish_model(
    onnx: Input[Model],
    evaluation: Input[Artifact],
    dataset: Input[Dataset],
    config: str,
    registry_uri: str,
    model_name: str,
    model_version: str,
    run_id: str,
    git_sha: str = "",
) -> str:
    """Writes <registry_uri>/<model_name>/<model_version or run_id>/ (manifest last), then latest.json;
    lineage.json records the run, the code's git_sha (empty when not given) and the data."""
    from t2iops.pipelines.registry import publish_model as publish
    from t2iops.pipelines.runtime import stage_config

    cfg = stage_config(config, "publish")
    lineage = {"run_id": run_id, "git_sha": git_sha, "dataset": dict(dataset.metadata), "evaluation": evaluation.uri,
               "export": onnx.uri}
    return publish(onnx.path, registry_uri, model_name, model_version or run_id, cfg,
                   metrics_path=evaluation.path, lineage=lineage)
