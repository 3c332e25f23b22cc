"""`t2iops retrain --host`: compile, submit through a real kfp.Client to the small KFP API server of
test_kfp_submit.py, wait, compare, promote or keep. The API server stands in for the cluster; the
version its publish step would have written is published into a folder registry beforehand by the
real publish function. What is checked: the run's parameters (git SHA, data revision, params,
version), each exit code, the decision files, and the pointer."""
from __future__ import annotations

import json
import subprocess

import pytest
from test_kfp_submit import KfpApi, _run_state

from t2iops.cli import main
from t2iops.pipelines.compile import compile_pipeline
from t2iops.registry.moves import move_champion
from t2iops.registry.pointer import read_pointer

SUCCEEDED = _run_state("SUCCEEDED", {"train": "SUCCEEDED", "merge + gate": "SUCCEEDED", "publish": "SUCCEEDED"})


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


@pytest.fixture()
def api():
    server = KfpApi()
    yield server
    server.server.shutdown()


@pytest.fixture()
def registry(tmp_path, publish_version):
    reg = tmp_path / "registry"
    publish_version(reg, "champ", edge_f1=0.30)
    move_champion(str(reg), "t2i-adapter", None, "promote", "champ")
    return reg


def _retrain(api, registry, tmp_path, version, *extra, package=None):
    out = tmp_path / f"out-{version}"
    rc = main(["retrain", "--host", api.host, *(["--package", str(package)] if package else []), "--registry", str(registry), "--version", version, "--out", str(out),
               "--poll-seconds", "0.01", "-p", "data_source=dvc", "-p", "dvc_repo=https://git.example/data.git",
               "-S", "train.lr=2e-5", "-S", "model.base_model=org/sdxl-base", *extra])
    return rc, out


def test_a_better_challenger_is_promoted_with_the_run_parameters_it_was_built_from(
        api, registry, tmp_path, publish_version, capsys, package):
    publish_version(registry, "better", edge_f1=0.40)
    api.states = [_run_state("RUNNING", {"train": "RUNNING"}), SUCCEEDED]
    rc, out = _retrain(api, registry, tmp_path, "better", package=package)
    assert rc == 0
    (run,) = api.posted("/runs")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    params = run["runtime_config"]["parameters"]
    assert params["dvc_rev"] == sha and params["model_version"] == "better" and params["git_sha"] == sha
    assert params["registry_uri"] == str(registry) and json.loads(params["config_train"])["train"]["lr"] == 2e-5
    assert run["display_name"] == "retrain-better"
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["outcome"] == "promoted" and result["champion_before"] == "champ" and result["git_sha"] == sha
    assert read_pointer(str(registry), "t2i-adapter", None).version == "better"
    decision = json.loads((out / "decision.json").read_text())
    assert decision["outcome"] == "promote" and decision["context"]["data_rev"] == sha
    assert (registry / "t2i-adapter" / "decisions").is_dir()


def test_kept_gate_failed_run_failed_and_dry_run_exit_codes(api, registry, tmp_path, publish_version, capsys,
                                                            package):
    publish_version(registry, "worse", edge_f1=0.20)
    api.states = [SUCCEEDED]
    rc, out = _retrain(api, registry, tmp_path, "worse", package=package)
    assert rc == 4
    assert "edge_f1 0.2 does not beat the champion's 0.3" in json.loads((out / "decision.json").read_text())["reasons"][0]

    # A dry run's pipeline publishes into a scratch registry in its run_root, never the registry.
    scratch = tmp_path / "runs" / "dry-run-registry"
    publish_version(scratch, "better", edge_f1=0.40)
    rc, out = _retrain(api, registry, tmp_path, "better", "--dry-run", "-p", f"run_root={tmp_path / 'runs'}",
                       package=package)
    assert rc == 0 and json.loads((out / "retrain.json").read_text())["outcome"] == "would_promote"
    assert api.posted("/runs")[-1]["runtime_config"]["parameters"]["registry_uri"] == str(scratch)
    assert read_pointer(str(registry), "t2i-adapter", None).version == "champ"
    assert not (registry / "t2i-adapter" / "better").exists()

    api.states = [_run_state("SUCCEEDED", {"train": "SUCCEEDED", "merge + gate": "SUCCEEDED"})]
    rc, out = _retrain(api, registry, tmp_path, "gated", package=package)
    assert rc == 3 and "evaluation gate failed" in (out / "decision.md").read_text()

    api.states = [_run_state("FAILED", {"train": "FAILED"})]
    rc, out = _retrain(api, registry, tmp_path, "crashed", package=package)
    assert rc == 1 and json.loads((out / "decision.json").read_text())["outcome"] == "run_failed"
    capsys.readouterr()
    rc, _ = _retrain(api, registry, tmp_path, "x", "-p", "model_version=other", package=package)
    assert rc == 2 and "contradicts what retrain sets" in capsys.readouterr().err
    rc, _ = _retrain(api, registry, tmp_path, "y", "-p", "git_sha=" + "0" * 40, package=package)
    assert rc == 2 and "HEAD of the checkout" in capsys.readouterr().err
    assert read_pointer(str(registry), "t2i-adapter", None).version == "champ"


def test_a_local_base_model_is_refused_before_anything_is_sent(api, registry, tmp_path, capsys, package):
    out = tmp_path / "out-local"
    rc = main(["retrain", "--host", api.host, "--package", str(package), "--registry", str(registry),
               "--version", "local-base", "--out", str(out), "-p", "data_source=dvc",
               "-p", "dvc_repo=https://git.example/data.git", "-S", "model.base_model=models/toy-base"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "models/toy-base" in err and "local path" in err
    assert api.posted("/runs") == []
    assert read_pointer(str(registry), "t2i-adapter", None).version == "champ"
