"""Shared fixtures: a real S3 server on loopback (moto's ThreadedMotoServer) and helpers.

Model fixtures (tiny SD1.5 / SDXL built by the project's own factory) live below as well so
every test loads models through the normal resolution path.
"""
from __future__ import annotations

import os
import uuid

import pytest

from t2iops.ports import free_port

# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")



@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL.

    Credentials are dummies set in the environment, as the standard AWS chain reads them."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh bucket on the loopback server; yields (endpoint_url, bucket name)."""
    import boto3

    name = f"t2iops-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return s3_server, name


# ---------------------------------------------------------------------------------------
# Tiny base models, built once per session by the project's own factory and loaded by tests
# through t2iops.models.resolve.load_base_model like any other model folder.
@pytest.fixture(scope="session")
def tiny_sd15_path(tmp_path_factory):
    """A tiny random SD1.5-shaped diffusers folder (str path)."""
    from t2iops.models.tiny import build_tiny_model

    return str(build_tiny_model("sd15", tmp_path_factory.mktemp("models") / "tiny-sd15"))


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory):
    """A tiny random SDXL-shaped diffusers folder (str path)."""
    from t2iops.models.tiny import build_tiny_model

    return str(build_tiny_model("sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl"))


@pytest.fixture()
def one_thread():
    """One torch thread for the test: on two cores shared by several processes, OpenMP threads
    spin waiting for each other (modules opt in with ``pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------
# The model registry: versions published by the real publish step from a minimal export.
from registry_records import registry_test_metrics  # noqa: E402  (tests/ is on sys.path here)


@pytest.fixture()
def publish_version(tmp_path):
    """``publish_version(registry, version, cfg=None, **metrics)``: publish a minimal export
    (export.json + a weights file) with those metrics as model ``t2i-adapter``; returns its URI."""
    import json

    from t2iops.config import load_config
    from t2iops.pipelines.registry import publish_model

    def publish(registry, version: str, cfg=None, **metrics):
        export = tmp_path / f"export-{uuid.uuid4().hex[:8]}"
        export.mkdir()
        (export / "export.json").write_text("{}")
        (export / "adapter.onnx").write_bytes(b"onnx")
        (export / "metrics.json").write_text(json.dumps(registry_test_metrics(**metrics)))
        return publish_model(str(export), str(registry), "t2i-adapter", version, cfg or load_config(None),
                             metrics_path=str(export / "metrics.json"), lineage={"run_id": f"run-{version}"})

    return publish
