"""Base models: resolution (hub id | local folder | s3://), family detection (sd15 / sdxl),
adapter shapes derived from the UNet, text encoding, tiny test models and the offline toy base.

Submodules import torch/diffusers; import them directly (``from t2iops.models.resolve import
load_base_model``) so that importing this package stays cheap.
"""
