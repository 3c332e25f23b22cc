"""The export stage on local folders: outputs, serving spec vs the real graph, provenance, failures."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.errors import ModelError, UsageError
from t2iops.export.stage import ExportCheckFailed, export_adapter


def save_adapter(folder: Path, seed: int = 0, **kwargs) -> Path:
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    config = dict(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1)
    config.update(kwargs)
    T2IAdapter(**config).save_pretrained(str(folder))
    return folder


def training_output(root: Path) -> Path:
    """The layout ``t2iops train`` writes: adapter/, config.resolved.yaml, summary.json."""
    save_adapter(root / "adapter")
    cfg = load_config(None, ["model.base_model=org/base-model", "model.revision=abc123", "data.root=data/circles"])
    cfg.write(root)
    (root / "summary.json").write_text(json.dumps({
        "steps": 10, "data_version": "d1g3st",
        "base_model": {"path": "org/base-model", "revision": "abc123", "commit": "f00d", "variant": None},
    }))
    return root


def cfg_for(*overrides: str):
    # square buckets: the schema's default (auto, SDXL's list at 1024) would add 1024-pixel
    # parity cases; tests/unit/test_export_buckets.py covers buckets
    return load_config(None, ["export.pipeline_check=skip", "export.resolutions=[32,64]", "encode.buckets=square",
                              *overrides])


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_of_a_training_output_writes_a_consistent_bundle(in_tmp):
    run = training_output(in_tmp / "run")
    (in_tmp / "dvc.lock").write_text(yaml.safe_dump({
        "schema": "2.0",
        "stages": {"synth": {"cmd": "t2iops data synth", "outs": [{"path": "data/circles", "hash": "md5", "md5": "0123abcd.dir"}]}},
    }))
    (in_tmp / "metrics.json").write_text(json.dumps({"fid": 12.5, "circle_iou": 0.4}))
    out = in_tmp / "export"
    spec = export_adapter(str(run), str(out), cfg_for(), metrics_uri=str(in_tmp / "metrics.json"), cwd=in_tmp)

    for name in ("adapter.onnx", "adapter_fp16.onnx", "export.json", "README.md", "config.resolved.yaml",
                 "_manifest.json", "adapter/config.json", "adapter/diffusion_pytorch_model.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "export.json").read_text()) == spec

    # The serving spec describes the graph that is actually there.
    session = ort.InferenceSession(str(out / "adapter.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert [o["name"] for o in spec["outputs"]] == names == ["adapter_res_0", "adapter_res_1"]
    assert sorted(spec["residual_shapes"]) == ["32", "64"]
    for res, shapes in spec["residual_shapes"].items():
        r = int(res)
        outputs = session.run(None, {"condition": np.zeros((1, 3, r, r), np.float32)})
        assert shapes == {n: list(o.shape) for n, o in zip(names, outputs)}
    assert spec["residual_shapes"]["64"] == {"adapter_res_0": [1, 32, 8, 8], "adapter_res_1": [1, 64, 4, 4]}
    assert spec["input"]["height_width_multiple_of"] == 16 and spec["input"]["channel_order"] == "RGB"
    for record in (spec["files"]["onnx_fp32"], spec["files"]["onnx_fp16"]):
        assert record["sha256"] == sha256(out / record["path"])
    assert spec["files"]["onnx_fp16"]["io_dtype"] == "float32"

    assert spec["family"] == "sd15" and spec["adapter"]["type"] == "full_adapter"
    assert spec["base_model"] == {"id": "org/base-model", "revision": "abc123", "commit": "f00d",
                                      "variant": None, "vae": None, "dtype": "fp32", "config_hash": None,
                                      "source": "training run summary.json"}
    data = spec["training_data"]
    assert data["dvc_md5"] == "0123abcd.dir" and data["dvc_stage"] == "synth" and "dvc_reason" not in data
    assert data["dataset_version"] == "d1g3st" and data["path"] == "data/circles"
    assert spec["git"]["commit"] is None and "not a git repository" in spec["git"]["reason"]
    assert spec["metrics"] == {"fid": 12.5, "circle_iou": 0.4}

    validation = spec["validation"]
    assert len(validation["parity"]) == 12 and all(c["passed"] for c in validation["parity"])
    assert {(c["batch"], c["height"], c["width"]) for c in validation["parity"]} == {(1, 32, 32), (1, 64, 64), (2, 32, 48)}
    assert validation["fp32_max_relative_error"] <= 1e-4 and validation["fp16_max_relative_error"] <= 1e-2
    assert validation["pipeline"]["status"] == "skipped" and "pipeline_check=skip" in validation["pipeline"]["reason"]
    assert spec["tensorrt"]["audit"]["fp32"]["ready"]
    assert spec["tensorrt"]["profiles"][0]["trtexec"].endswith("--fp16 --saveEngine=adapter_all_fp16.plan")

    card = (out / "README.md").read_text()
    assert "down_intrablock_additional_residuals" in card and "T2IAdapter.from_pretrained" in card
    assert "torch.cat([r, r])" in card and "multiples of **16**" in card


def test_sdxl_adapter_family_and_git_commit(in_tmp):
    save_adapter(in_tmp / "xl", adapter_type="full_adapter_xl", channels=[32, 64, 64, 64], downscale_factor=16)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=in_tmp, check=True)
    (in_tmp / "file.txt").write_text("x")
    subprocess.run(["git", "add", "file.txt"], cwd=in_tmp, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=in_tmp, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=in_tmp, capture_output=True, text=True).stdout.strip()
    spec = export_adapter(str(in_tmp / "xl"), str(in_tmp / "out"), cfg_for("export.fp16=false"), cwd=in_tmp)
    assert spec["family"] == "sdxl" and spec["adapter"]["total_downscale_factor"] == 32
    assert spec["git"] == {"commit": head, "dirty": False}
    assert not (in_tmp / "out" / "adapter_fp16.onnx").exists() and "onnx_fp16" not in spec["files"]
    assert len(spec["outputs"]) == 4
    data = spec["training_data"]
    assert data["dvc_md5"] is None and "no dvc.lock" in data["dvc_reason"]
    assert data["dataset_version"] is None and "not a training output" in data["dataset_version_reason"]


def test_sizes_that_are_not_multiples_are_refused_before_any_work(in_tmp):
    save_adapter(in_tmp / "a")
    with pytest.raises(UsageError, match=r"export.resolutions entry 72: height 72 \(nearest valid: 64 or 80\)"):
        export_adapter(str(in_tmp / "a"), str(in_tmp / "out"), cfg_for("export.resolutions=[64,72]"))
    with pytest.raises(UsageError, match=r"parity size 40: .*32 or 48"):
        export_adapter(str(in_tmp / "a"), str(in_tmp / "out"), cfg_for("export.parity_resolutions=[40]"))
    assert not (in_tmp / "out").exists()


def test_failed_parity_publishes_nothing(in_tmp):
    save_adapter(in_tmp / "a")
    with pytest.raises(ExportCheckFailed, match=r"parity cases failed; worst: fp32 .*export.fp32_tolerance"):
        export_adapter(str(in_tmp / "a"), str(in_tmp / "out"), cfg_for("export.fp32_tolerance=1e-12"))
    assert not (in_tmp / "out").exists()
    assert not [p for p in in_tmp.iterdir() if p.name.startswith(".out")]  # no staging left behind


def test_required_pipeline_check_fails_clearly_without_a_base(in_tmp):
    save_adapter(in_tmp / "a")
    (in_tmp / "not-a-pipeline").mkdir()
    cfg = load_config(None, [f"model.base_model={in_tmp / 'not-a-pipeline'}", "export.pipeline_check=required"])
    with pytest.raises(ModelError, match="pipeline_check=required.*has no model_index.json"):
        export_adapter(str(in_tmp / "a"), str(in_tmp / "out"), cfg)
    assert not (in_tmp / "out").exists()
    # auto mode goes on and says why the check did not run
    cfg = load_config(None, [f"model.base_model={in_tmp / 'not-a-pipeline'}", "export.pipeline_check=auto"])
    pipeline = export_adapter(str(in_tmp / "a"), str(in_tmp / "out"), cfg)["validation"]["pipeline"]
    assert pipeline["status"] == "skipped" and "has no model_index.json" in pipeline["reason"]


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("empty", "neither config.json nor adapter/config.json"),
    ("bad_json", "config.json is not valid JSON"),
    ("bad_type", "adapter_type='unet'"),
    ("no_weights", "no weights file"),
    ("bad_weights", "cannot load weights from diffusion_pytorch_model.safetensors"),
])
def test_missing_or_corrupt_adapter_gives_a_clear_error(in_tmp, damage, message):
    folder = in_tmp / "a"
    if damage != "missing":
        save_adapter(folder)
    if damage == "empty":
        for f in folder.iterdir():
            f.unlink()
    elif damage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif damage == "bad_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "adapter_type": "unet"}))
    elif damage == "no_weights":
        (folder / "diffusion_pytorch_model.safetensors").unlink()
    elif damage == "bad_weights":
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match=message):
        export_adapter(str(folder), str(in_tmp / "out"), cfg_for())
    assert not (in_tmp / "out").exists()


def test_cli_export_and_exit_codes(in_tmp, capsys):
    save_adapter(in_tmp / "a")
    rc = main(["export", "--adapter", str(in_tmp / "a"), "--out", str(in_tmp / "x"),
               "-S", "export.pipeline_check=skip", "-S", "encode.buckets=square", "--parity-sizes", "32", "48"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["family"] == "sd15" and summary["fp32_max_relative_error"] <= 1e-4
    assert summary["pipeline_check"] == "skipped" and summary["tensorrt_ready"] is True
    sizes = {(c["height"], c["width"]) for c in json.loads((in_tmp / "x" / "export.json").read_text())["validation"]["parity"]}
    assert sizes == {(32, 32), (48, 48), (32, 48)}

    rc = main(["export", "--adapter", str(in_tmp / "a"), "--out", str(in_tmp / "y"), "--parity-sizes", "50"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "t2iops export: error:" in err and "48 or 64" in err
    assert main(["export", "--adapter", str(in_tmp / "nope"), "--out", str(in_tmp / "y")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (in_tmp / "y").exists()


def test_data_version_reasons(tmp_path):
    from t2iops.export.serving_spec import data_version
    from t2iops.export.source import AdapterSource

    cfg = cfg_for("data.root=./data/circles/")
    source = AdapterSource(uri="x", adapter_dir=tmp_path, config={}, run_dir=tmp_path, training_summary={})
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"other": {"outs": [{"path": "data/else", "md5": "1"}]}}}))
    record = data_version(source, cfg, cwd=tmp_path)
    assert record["dvc_md5"] is None and "no entry for the data root" in record["dvc_reason"]
    assert "records no data_version" in record["dataset_version_reason"]
    # paths are compared without ./ and trailing slashes; deps count as well as outs
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"train": {"deps": [{"path": "data/circles", "md5": "9.dir"}]}}}))
    assert data_version(source, cfg, cwd=tmp_path)["dvc_md5"] == "9.dir"
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert "not valid YAML" in data_version(source, cfg, cwd=tmp_path)["dvc_reason"]
    # data tracked with `dvc add`: the .dvc pointer file beside the data
    (tmp_path / "dvc.lock").unlink()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "circles.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "7.dir", "path": "circles"}]}))
    assert data_version(source, cfg, cwd=tmp_path)["dvc_md5"] == "7.dir"


def test_a_base_model_setting_that_disagrees_with_the_run_is_refused_before_publishing(in_tmp):
    run = training_output(in_tmp / "run")
    cfg = cfg_for("model.base_model=org/other-model")
    with pytest.raises(ModelError, match="model.base_model='org/other-model' but training run .* path 'org/base-model'"):
        export_adapter(str(run), str(in_tmp / "out"), cfg)
    assert not (in_tmp / "out").exists()
