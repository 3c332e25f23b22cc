"""Export stage: ONNX fp32/fp16 graphs with parity checks and the serving spec. Wraps
:func:`t2iops.export.stage.export_adapter`."""
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def export_adapter(
    model: Input[Model], evaluation: Input[Artifact], dataset: Input[Dataset], config: str, git_sha: str,
    onnx: Output[Model], model_card: Output[Markdown],
):
    """onnx: adapter.onnx, adapter_fp16.onnx, export.json (with the evaluation metrics), README.md.
    The card's code and data provenance are the run's git_sha and the pull step's record (a step
    has no checkout to read them from)."""
    from t2iops.export.stage import export_adapter as export
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import copy_report

    cfg = stage_config(config, "export")
    spec = export(model.path, onnx.path, cfg, metrics_uri=f"{evaluation.path}/metrics.json",
                  run={"git_sha": git_sha, "pulled": dict(dataset.metadata)})
    onnx.metadata["family"] = spec.get("family")
    copy_report(onnx.path, "README.md", model_card.path)
