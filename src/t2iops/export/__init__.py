"""ONNX export of trained adapters: fp32 + fp16 graphs, a parity gate against PyTorch,
TensorRT readiness, a serving spec and an onnxruntime adapter for diffusers pipelines.

Submodules import torch/onnx; import them directly (``from t2iops.export.stage import
export_adapter``, ``from t2iops.export.ort_adapter import OrtT2IAdapter``).
"""
