"""Export stage: ONNX fp32/fp16 graphs with parity checks and the serving manifest. Wraps
:func:`t2iops.export.stage.export_adapter`."""
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from . import component


@component
def export_adapter(model: Input[Model], evaluation: Input[Artifact], config: str, onnx: Output[Model], model_card: Output[Markdown]):
    """onnx: adapter.onnx, adapter_fp16.onnx, export.json (with the evaluation metrics), README.md."""
    from t2iops.export.stage import export_adapter as export
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.steps import copy_report

    cfg = stage_config(config, "export")
    manifest = export(model.path, onnx.path, cfg, metrics_uri=f"{evaluation.path}/metrics.json")
    onnx.metadata["family"] = manifest.get("family")
    copy_report(onnx.path, "README.md", model_card.path)
