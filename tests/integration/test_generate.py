"""``t2iops generate`` through the real CLI (``t2iops.cli.main``) on the toy preset with the tiny
SD1.5 model: two random adapters exported by the export stage, published by the pipeline's
publish step to a folder registry, v1 promoted with ``t2iops registry promote``.

The exported ONNX adapter is what serving runs: the same seed through onnxruntime and through
PyTorch gives residuals within ``export.fp32_tolerance`` and the same images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from t2iops.cli import main
from t2iops.presets import preset_config, preset_path

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "t2i-adapter"
# Generated images (uint8) from ONNX and PyTorch residuals, same seed: measured identical here;
# a level of rounding is allowed. The adapter itself moves pixels by far more (checked below).
IMAGE_LEVELS = 1


def circle(path: Path, width: int, height: int) -> Path:
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).ellipse((6, 6, width - 6, height - 6), outline=(255, 255, 255), width=3)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def served(tiny_sd15_path, tmp_path_factory):
    """Two adapters exported (v1, v2), both published to a folder registry, v1 the champion."""
    import torch
    from diffusers import T2IAdapter

    from t2iops.export.stage import export_adapter
    from t2iops.models.family import adapter_kwargs_for
    from t2iops.models.resolve import load_base_model
    from t2iops.pipelines.registry import publish_model

    work = tmp_path_factory.mktemp("generate")
    overrides = [f"model.base_model={tiny_sd15_path}", "encode.buckets=square", "export.pipeline_check=skip",
                 "export.fp16=false", "evaluate.num_inference_steps=2", f"storage.cache_dir={work / 'cache'}"]
    cfg = preset_config("toy", overrides)
    base = load_base_model(cfg.model, components=())
    kwargs = adapter_kwargs_for(base.unet_config, "full_adapter", num_res_blocks=1,
                                vae_scale_factor=base.vae_scale_factor)
    registry = work / "registry"
    for seed, version in ((0, "v1"), (1, "v2")):
        torch.manual_seed(seed)
        T2IAdapter(**kwargs).save_pretrained(str(work / f"adapter-{version}"))
        export_adapter(str(work / f"adapter-{version}"), str(work / f"export-{version}"), cfg)
        publish_model(str(work / f"export-{version}"), str(registry), MODEL, version, cfg)
    args = ["--params", str(preset_path("toy")), *[a for o in overrides for a in ("-S", o)]]
    assert main(["registry", "promote", "v1", "--registry", str(registry), *args]) == 0
    conditions = work / "conditions"
    conditions.mkdir()
    circle(conditions / "a.png", 64, 64)
    circle(conditions / "b.png", 64, 96)
    return {"work": work, "cfg": cfg, "args": args, "registry": registry, "conditions": conditions}


def generate(served, capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["generate", "--out", str(out), *extra, *served["args"]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def pixels(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / name), dtype=np.int16)


def manifest_sha(folder: Path, rel: str) -> str:
    return json.loads((folder / "_manifest.json").read_text())["files"][rel]["sha256"]


def test_the_export_runs_alike_with_torch_and_onnxruntime(served, capsys, tmp_path):
    export, conditions = served["work"] / "export-v1", served["conditions"]
    common = ["--adapter", str(export), "--condition", str(conditions / "a.png"), "--condition",
              str(conditions / "b.png"), "--prompt", "red circle", "--prompt", "blue circle", "--seed", "7"]
    runs = {}
    for runtime in ("torch", "onnxruntime"):
        rc, out, err = generate(served, capsys, tmp_path / runtime, *common, "--runtime", runtime)
        assert rc == 0, err
        assert json.loads(out)["runtime"] == runtime
        runs[runtime] = json.loads((tmp_path / runtime / "generation.json").read_text())
    torch_run, ort_run = runs["torch"], runs["onnxruntime"]
    assert torch_run["adapter"]["sha256"] == manifest_sha(export, "adapter/diffusion_pytorch_model.safetensors")
    assert ort_run["adapter"]["sha256"] == manifest_sha(export, "adapter.onnx")
    assert torch_run["base_model"]["path"] == served["cfg"].model.base_model
    assert torch_run["settings"]["steps"] == 2 and torch_run["settings"]["scale"] == 1.0
    assert [(i["prompt"], i["seed"], i["width"], i["height"]) for i in torch_run["images"]] == [
        ("red circle", 7, 64, 64), ("blue circle", 8, 64, 96)]
    assert ort_run["images"] == torch_run["images"]
    for image in torch_run["images"]:
        difference = np.abs(pixels(tmp_path / "torch", image["file"]) - pixels(tmp_path / "onnxruntime", image["file"]))
        assert difference.max() <= IMAGE_LEVELS, image
    # Without the adapter (scale 0) the same seed gives another image: the comparison could fail.
    rc, _, err = generate(served, capsys, tmp_path / "unscaled", *common, "--scale", "0")
    assert rc == 0, err
    effect = np.abs(pixels(tmp_path / "torch", "0000-a.png") - pixels(tmp_path / "unscaled", "0000-a.png")).max()
    assert effect > 10 * IMAGE_LEVELS


def test_engine_residuals_onnxruntime_vs_torch_within_the_export_tolerance(served):
    from t2iops.serve.engine import load_adapter

    cfg = served["cfg"]
    condition = Image.open(served["conditions"] / "b.png").convert("RGB")
    torch_adapter = load_adapter(str(served["work"] / "export-v1"), cfg, "torch")
    ort_adapter = load_adapter(str(served["work"] / "export-v1"), cfg, "onnxruntime")
    reference, candidate = torch_adapter.residuals(condition), ort_adapter.residuals(condition)
    assert [r.shape for r in reference] == [c.shape for c in candidate] and len(reference) == 3
    worst = max(float(np.abs(r - c).max() / np.abs(r).max()) for r, c in zip(reference, candidate))
    assert worst <= cfg.export.fp32_tolerance
    other = load_adapter(str(served["work"] / "export-v2"), cfg, "onnxruntime").residuals(condition)
    assert max(float(np.abs(r - o).max() / np.abs(r).max()) for r, o in zip(reference, other)) > 100 * worst


def test_registry_champion_and_version(served, capsys, tmp_path):
    registry, conditions = served["registry"], served["conditions"]
    common = ["--condition", str(conditions / "a.png"), "--prompt", "red circle", "--registry", str(registry)]
    rc, out, err = generate(served, capsys, tmp_path / "champion", "--adapter", "registry:champion", *common)
    assert rc == 0, err
    record = json.loads((tmp_path / "champion" / "generation.json").read_text())
    v1 = registry / MODEL / "v1"
    assert record["adapter"]["version"] == "v1" and record["adapter"]["registry"]["generation"] == 1
    assert record["adapter"]["sha256"] == manifest_sha(v1, "adapter/diffusion_pytorch_model.safetensors")
    assert record["adapter"]["verified"] is True
    assert (tmp_path / "champion" / "_manifest.json").is_file()  # the output was published whole
    assert (tmp_path / "champion" / "config.resolved.yaml").is_file()

    rc, out, err = generate(served, capsys, tmp_path / "v2", "--adapter", "registry:v2", "--runtime", "onnxruntime",
                            *common)
    assert rc == 0, err
    assert json.loads(out)["adapter"] == "v2"
    assert json.loads(out)["sha256"] == manifest_sha(registry / MODEL / "v2", "adapter.onnx")


def test_a_tampered_file_is_refused_naming_it(served, capsys, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(served["registry"], registry)
    graph = registry / MODEL / "v1" / "adapter.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    common = ["--condition", str(served["conditions"] / "a.png"), "--prompt", "red circle"]
    rc, _, err = generate(served, capsys, tmp_path / "out", "--adapter", "registry:champion", "--registry",
                          str(registry), *common)
    assert rc == 6, err
    assert f"{graph}: sha256" in err and "not loaded" in err
    assert not (tmp_path / "out").exists()

    export = tmp_path / "export"
    shutil.copytree(served["work"] / "export-v1", export)
    weights = export / "adapter" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    rc, _, err = generate(served, capsys, tmp_path / "out", "--adapter", str(export), *common)
    assert rc == 1 and str(weights) in err and "refusing it" in err, err
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_refused_before_any_image(served, capsys, tmp_path):
    conditions, export = served["conditions"], str(served["work"] / "export-v1")
    odd = circle(tmp_path / "odd.png", 64, 72)
    rc, _, err = generate(served, capsys, tmp_path / "o", "--adapter", export, "--condition", str(odd),
                          "--prompt", "x")
    assert rc == 2 and f"image 0 (condition {odd}): condition: height 72 (nearest valid: 64 or 80)" in err, err
    rc, _, err = generate(served, capsys, tmp_path / "o", "--adapter", export, "--conditions", str(conditions),
                          "--prompt", "a", "--prompt", "b", "--prompt", "c")
    assert rc == 2 and "--prompt given 3 times for 2 conditions" in err, err
    rc, _, err = generate(served, capsys, tmp_path / "o", "--adapter", str(served["work"] / "adapter-v1"),
                          "--runtime", "onnxruntime", "--conditions", str(conditions), "--prompt", "a")
    assert rc == 2 and "runtime onnxruntime needs an export" in err, err
    rc, _, err = generate(served, capsys, tmp_path / "o", "--adapter", export, "--conditions", str(conditions),
                          "--prompt", "x" * 10_000)
    assert rc == 2 and "): prompt: 10000 characters, more than the limit of 2000" in err, err
    rc, _, err = generate(served, capsys, tmp_path / "o", "--adapter", "registry:v9", "--registry",
                          str(served["registry"]), "--conditions", str(conditions), "--prompt", "x")
    assert rc == 2 and "'v9' is not published" in err, err
    assert not (tmp_path / "o").exists()


def test_a_validated_split_and_an_unpublished_adapter_folder(served, capsys, tmp_path):
    """The rows of a validated split (captions, conditions) with a bare adapter folder (no
    manifest: loaded as it is, recorded as not verified), cover-cropped to one size."""
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate

    cfg = preset_config("toy", [f"model.base_model={served['cfg'].model.base_model}", "data.synth.count=6",
                                "data.synth.resolution=64", "data.val_fraction=0", "data.test_fraction=0.5"])
    synthesize(str(tmp_path / "data"), cfg)
    validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
    rc, _, err = generate(served, capsys, tmp_path / "out", "--adapter", str(served["work"] / "adapter-v1"),
                          "--validated", str(tmp_path / "validated"), "--data", str(tmp_path / "data"),
                          "--split", "train", "--limit", "2", "--size", "48x64")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert record["adapter"]["verified"] is False and record["adapter"]["kind"] == "folder"
    assert len(record["images"]) == 2 and all(i["row_id"] and i["prompt"] for i in record["images"])
    assert [(i["width"], i["height"]) for i in record["images"]] == [(64, 48)] * 2
    assert Image.open(tmp_path / "out" / record["images"][0]["file"]).size == (64, 48)


def test_a_training_output_records_its_base_model(served, capsys, tmp_path):
    """``O/adapter`` of a training run published by the trainer's own publish step: checked
    against O's manifest, the base model read from O/summary.json."""
    from safetensors.torch import load_file

    from t2iops.train.result import publish_result

    folder, cfg = served["work"] / "adapter-v1", served["cfg"]
    summary = {"steps": 0, "data_version": "none", "base_model": {"path": cfg.model.base_model, "dtype": "fp32"}}
    publish_result(str(tmp_path / "O"), load_file(folder / "diffusion_pytorch_model.safetensors"),
                   json.loads((folder / "config.json").read_text()), summary, cfg)
    rc, _, err = generate(served, capsys, tmp_path / "out", "--adapter", str(tmp_path / "O" / "adapter"),
                          "--condition", str(served["conditions"] / "a.png"), "--prompt", "red circle")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert record["adapter"]["kind"] == "training" and record["adapter"]["verified"] is True
    assert record["adapter"]["sha256"] == manifest_sha(tmp_path / "O", "adapter/diffusion_pytorch_model.safetensors")
    assert record["base_model"]["dtype"] == "fp32"


@pytest.mark.s3
def test_the_champion_of_an_s3_registry(served, capsys, tmp_path, s3_bucket):
    """Verified on S3, copied through the manifest's versioned keys; a tampered object is named."""
    import boto3

    from t2iops.pipelines.registry import publish_model
    from t2iops.storage import VERSIONS

    endpoint, bucket = s3_bucket
    registry = f"s3://{bucket}/registry"
    cfg = preset_config("toy", [f"storage.endpoint_url={endpoint}"])
    publish_model(str(served["work"] / "export-v2"), registry, MODEL, "v2", cfg)
    s3 = ["-S", f"storage.endpoint_url={endpoint}", "--registry", registry]
    assert main(["registry", "promote", "v2", *served["args"], *s3]) == 0
    common = ["--adapter", "registry:champion", "--runtime", "onnxruntime", "--condition",
              str(served["conditions"] / "a.png"), "--prompt", "red circle", *s3]
    rc, out, err = generate(served, capsys, tmp_path / "out", *common)
    assert rc == 0, err
    assert json.loads(out)["adapter"] == "v2"
    assert json.loads(out)["sha256"] == manifest_sha(served["registry"] / MODEL / "v2", "adapter.onnx")

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"registry/{MODEL}/v2/_manifest.json")["Body"].read())
    key = f"registry/{MODEL}/v2/{VERSIONS}/{manifest['version']}/adapter.onnx"  # the object the manifest names
    client.put_object(Bucket=bucket, Key=key, Body=b"not the graph")
    rc, _, err = generate(served, capsys, tmp_path / "out2", *common)
    assert rc == 6 and "adapter.onnx" in err and "not loaded" in err, err
