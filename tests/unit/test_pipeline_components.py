"""Each component's Python function called directly on tiny inputs (KFP artifacts pointing at
temporary folders), plus the small library pieces the components rely on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from kfp import dsl

from t2iops import storage
from t2iops.config import ConfigError, load_config
from t2iops.errors import DataError, UsageError
from t2iops.pipelines.registry import publish_model
from t2iops.pipelines.runtime import config_from_param, config_param, parse_config_param
from t2iops.pipelines.kfp_metrics import evaluation_metrics, training_metrics
from t2iops.pipelines.steps import check_shards, run_prefix, step_key

# Each step receives only the sections its stage reads.
TINY_PULL = json.dumps({"data.synth.count": 6, "data.synth.resolution": 32})
TINY_VALIDATE = json.dumps({"data.min_size": 16})


@pytest.fixture(scope="module")
def components():
    """The component files' plain functions, as the pipeline wraps them (checkout or wheel)."""
    from t2iops._project.components import data, publish

    return data, publish


def _artifact(kind, tmp_path: Path, name: str):
    return kind(name=name, uri=str(tmp_path / name))


def test_config_parameter_forms_and_errors():
    assert parse_config_param("") == {} and parse_config_param(None) == {}
    nested = config_from_param('{"train": {"lr": 2e-5}, "data.synth.count": 7}')
    assert nested.train.lr == 2e-5 and nested.data.synth.count == 7
    assert config_from_param('["train.max_steps=3"]').train.max_steps == 3
    full = load_config(None, ["evaluate.num_samples=5"])
    assert config_from_param(config_param(full)) == full
    for text, key in (("train: {lr: -1}", "train.lr"), ("trian.lr: 1", "trian"), ("7", "mapping")):
        with pytest.raises(ConfigError, match=key):
            config_from_param(text)


def test_pull_then_validate_components(components, tmp_path):
    data, _ = components
    dataset = _artifact(dsl.Dataset, tmp_path, "dataset")
    data.pull_dataset(source="synth", dvc_repo="", dvc_rev="", dvc_path="", dvc_remote="",
                                  config=TINY_PULL, dataset=dataset)
    assert len((Path(dataset.path) / "metadata.jsonl").read_text().splitlines()) == 6
    assert dataset.metadata["source"] == "synth" and dataset.metadata["count"] == 6
    validated = _artifact(dsl.Dataset, tmp_path, "validated")
    report = _artifact(dsl.Markdown, tmp_path, "report.md")
    data.validate_dataset(dataset=dataset, config=TINY_VALIDATE, validated=validated, report=report)
    assert validated.metadata == {"rows": 6, "good": 6, "bad": 0, "status": "passed"}
    assert len((Path(validated.path) / "rows.jsonl").read_text().splitlines()) == 6
    assert "# Dataset validation: passed" in Path(report.path).read_text()
    # A broken row over the threshold fails the step, naming the row's file.
    (Path(dataset.path) / "images" / "000002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="000002"):
        data.validate_dataset(dataset=dataset, config=TINY_VALIDATE, validated=_artifact(dsl.Dataset, tmp_path, "v2"),
                                          report=_artifact(dsl.Markdown, tmp_path, "r2.md"))
    with pytest.raises(ConfigError, match="data.synth.count"):
        data.pull_dataset(source="synth", dvc_repo="", dvc_rev="", dvc_path="", dvc_remote="",
                                      config='{"data.synth.count": 0}', dataset=_artifact(dsl.Dataset, tmp_path, "d3"))


def _encode_in_components(encode, dataset, validated, config: str, shards: list[int], tmp_path: Path, name: str) -> Path:
    """What the pipeline runs: one encode_shard per item of the shard list, then merge_cache."""
    slices = [encode.encode_shard(dataset=dataset, validated=validated, config=config, shard_index=i,
                                              shards=shards, run_root=str(tmp_path / f"runs-{name}"))
              for i in reversed(shards)]  # ParallelFor gives no order
    cache = _artifact(dsl.Dataset, tmp_path, name)
    encode.merge_cache(slice_uris=slices, config=config, cache=cache)
    return Path(cache.path)


def test_encode_shards_merge_into_the_cache_one_shard_writes(components, tmp_path, tiny_sd15_path):
    data, _ = components
    from t2iops._project.components import encode

    dataset = _artifact(dsl.Dataset, tmp_path, "dataset")
    data.pull_dataset(source="synth", dvc_repo="", dvc_rev="", dvc_path="", dvc_remote="",
                                  config=TINY_PULL, dataset=dataset)
    validated = _artifact(dsl.Dataset, tmp_path, "validated")
    data.validate_dataset(dataset=dataset, config=TINY_VALIDATE, validated=validated,
                                      report=_artifact(dsl.Markdown, tmp_path, "report.md"))
    config = json.dumps({"model.base_model": tiny_sd15_path, "data.val_fraction": 0.0, "data.test_fraction": 0.0,
                         "encode.resolution": 32, "encode.shard_size": 2, "encode.batch_size": 2})
    one = _encode_in_components(encode, dataset, validated, config, [0], tmp_path, "cache-1")
    two = _encode_in_components(encode, dataset, validated, config, [0, 1], tmp_path, "cache-2")
    # Every tensor shard, part.json, cache.json and the resolved config: the same sha256.
    assert storage.read_manifest(one)["files"] == storage.read_manifest(two)["files"]
    slice_dirs = sorted((tmp_path / "runs-cache-2").glob("*/encode/*"))
    assert [p.name for p in slice_dirs] == ["shard-0-of-2", "shard-1-of-2"]
    assert all(list(p.rglob("*.safetensors")) for p in slice_dirs)  # 6 rows in shards of 2: both slices encoded
    with pytest.raises(UsageError, match="encode_shards"):
        encode.encode_shard(dataset=dataset, validated=validated, config=config, shard_index=1,
                                        shards=[1, 2], run_root=str(tmp_path / "bad"))


def _fake_export(root: Path) -> Path:
    """A folder shaped like an export (the registry copies files; it does not read the graphs)."""
    root.mkdir(parents=True)
    (root / "adapter.onnx").write_bytes(b"\x08\x07graph")
    (root / "export.json").write_text(json.dumps({"family": "sd15"}))
    (root / "README.md").write_text("# adapter\n")
    return root


def test_publish_component_writes_the_registry_version_last(components, tmp_path):
    _, publish = components
    onnx = dsl.Model(name="onnx", uri=str(_fake_export(tmp_path / "export")))
    evaluation = dsl.Artifact(name="evaluation", uri=str(tmp_path / "eval"))
    Path(evaluation.path).mkdir()
    Path(evaluation.path, "metrics.json").write_text(json.dumps({"gate": {"passed": True}}))
    dataset = dsl.Dataset(name="dataset", uri=str(tmp_path / "ds"), metadata={"source": "dvc", "rev": "v1"})
    uri = publish.publish_model(onnx=onnx, evaluation=evaluation, dataset=dataset, config="{}",
                                            registry_uri=str(tmp_path / "registry"), model_name="circles",
                                            model_version="", run_id="run-42", git_sha="0123abc" * 5)
    assert uri == str(tmp_path / "registry" / "circles" / "run-42")
    manifest = storage.read_manifest(uri)
    assert {"adapter.onnx", "export.json", "README.md", "metrics.json", "lineage.json", "config.resolved.yaml"} <= set(manifest["files"])
    lineage = json.loads(Path(uri, "lineage.json").read_text())
    assert lineage["run_id"] == "run-42" and lineage["dataset"] == {"source": "dvc", "rev": "v1"}
    assert lineage["git_sha"] == "0123abc" * 5  # the code the model was built from
    assert json.loads((tmp_path / "registry" / "circles" / "latest.json").read_text())["version"] == "run-42"
    with pytest.raises(UsageError, match="already holds"):
        publish.publish_model(onnx=onnx, evaluation=evaluation, dataset=dataset, config="{}",
                                          registry_uri=str(tmp_path / "registry"), model_name="circles",
                                          model_version="run-42", run_id="run-43")


@pytest.mark.s3
def test_publish_to_s3_registry(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}"])
    dest = publish_model(str(_fake_export(tmp_path / "export")), f"s3://{bucket}/registry", "circles", "v1", cfg)
    assert dest == f"s3://{bucket}/registry/circles/v1"
    assert storage.read_bytes(f"{dest}/adapter.onnx", cfg) == b"\x08\x07graph"
    assert json.loads(storage.read_text(f"s3://{bucket}/registry/circles/latest.json", cfg))["uri"] == dest
    with pytest.raises(UsageError, match="model_name"):
        publish_model(str(tmp_path / "export"), f"s3://{bucket}/registry", "bad/name", "v2", cfg)


def test_step_helpers():
    assert check_shards([1, 0, 2]) == 3
    for bad in ([], [0, 0], [1, 2]):
        with pytest.raises(UsageError, match="eval_shards"):
            check_shards(bad)
    assert run_prefix("s3://b/runs", "abc", "train") == "s3://b/runs/abc/train"
    with pytest.raises(UsageError, match="no key"):
        run_prefix("s3://b/runs", "", "train")
    # A step's prefix is named by what identifies it: the same inputs, the same prefix (a
    # retried step resumes there); other inputs, another prefix.
    assert step_key("s3://root/run-1/train-adapter/model") == step_key("s3://root/run-1/train-adapter/model")
    assert step_key("s3://root/run-1/train-adapter/model") != step_key("s3://root/run-2/train-adapter/model")



def test_kfp_metrics_are_the_named_scalars_of_the_stage_outputs():
    summary = {"final_loss": 0.12, "samples_per_s": 40.0, "steps": 3, "skipped_steps": 0, "losses": [0.2, None, 0.12],
               "peak_memory": {"bytes": 2**30}, "validation": [{"step": 0, "val_loss": 0.3},
                                                             {"step": 3, "val_loss": 0.2, "edge_f1": 0.4}]}
    assert training_metrics(summary) == {"final_loss": 0.12, "samples_per_s": 40.0, "steps": 3.0, "skipped_steps": 0.0,
                                         "peak_memory_gb": 1.0, "val_loss": 0.2, "val_edge_f1": 0.4}
    result = {"num_samples": 4, "edge_f1": {"with_adapter": 0.5, "without_adapter": 0.2, "lift": 0.3, "real_images": 0.9},
              "fid": {"with_adapter": float("nan"), "without_adapter": 9.0}, "gate": {"passed": False, "checks": []}}
    assert evaluation_metrics(result) == {"num_samples": 4.0, "edge_f1_with_adapter": 0.5, "edge_f1_without_adapter": 0.2,
                                          "edge_f1_lift": 0.3, "fid_without_adapter": 9.0, "gate_passed": 0.0}
