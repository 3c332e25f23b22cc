"""`t2iops retrain --dry-run` writes nothing to the registry, and retrain's own promotion verifies
the challenger first. The real CLI and a real kfp.Client submit to the small KFP API server of
tests/integration/test_kfp_submit.py, standing in for the cluster; the run's publish step is
played by the project's publish function, into the location the run was given (for a dry run the
scratch registry under its run_root). Every object under the registry prefix is compared, bytes
and ETag / mtime, before and after. A real kfp.local dry run is in test_retrain_loop.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from registry_harness import MODEL, registry  # noqa: F401  (registry: the fixture)

from t2iops.cli import main
from t2iops.pipelines.compile import compile_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_kfp_submit import KfpApi, _run_state  # noqa: E402

SUCCEEDED = _run_state("SUCCEEDED", {"train": "SUCCEEDED", "merge + gate": "SUCCEEDED", "publish": "SUCCEEDED"})


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


@pytest.fixture()
def api():
    server = KfpApi()
    server.states = [SUCCEEDED]
    yield server
    server.server.shutdown()


def _run_root(registry, tmp_path) -> str:
    return f"s3://{registry.bucket}/runs" if registry.kind == "s3" else str(tmp_path / "runs")


def _retrain(registry, api, package, tmp_path, version: str, *extra: str):
    out = tmp_path / f"out-{version}"
    registry.capsys.readouterr()
    rc = main(["retrain", "--host", api.host, "--package", str(package), *registry.location, "--version", version,
               "--out", str(out), "--poll-seconds", "0.01", "-p", "data_source=dvc",
               "-p", "dvc_repo=https://git.example/data.git", "-S", "model.base_model=org/sdxl-base", *extra])
    captured = registry.capsys.readouterr()
    return rc, out, captured


def test_a_dry_run_trains_compares_and_writes_nothing_to_the_registry(registry, api, package, tmp_path):
    registry.publish("champ", edge_f1=0.30)
    assert registry.cli("promote", "champ").rc == 0
    run_root = _run_root(registry, tmp_path)
    scratch = f"{run_root}/dry-run-registry"
    registry._publish(scratch, "better", cfg=registry.cfg, edge_f1=0.40)  # what the run's publish step writes
    before = registry.snapshot()

    rc, out, captured = _retrain(registry, api, package, tmp_path, "better", "--dry-run", "-p", f"run_root={run_root}")
    assert rc == 0, captured.err
    result = json.loads((out / "retrain.json").read_text())
    assert (result["outcome"], result["dry_run"], result["champion"]) == ("would_promote", True, "champ")
    assert result["challenger_uri"] == f"{scratch}/{MODEL}/better"
    assert "dry run: nothing written to the registry" in result["message"]
    assert json.loads(captured.out.splitlines()[-1]) == result
    assert json.loads((out / "decision.json").read_text())["outcome"] == "promote"
    assert "| **edge_f1** (primary) | higher | 0.3 | 0.4 |" in (out / "decision.md").read_text()
    (run,) = api.posted("/runs")
    assert run["runtime_config"]["parameters"]["registry_uri"] == scratch
    assert registry.snapshot() == before  # not one object added, changed or rewritten

    # The same comparison without --dry-run does write (so the comparison above can see a write).
    registry.publish("better2", edge_f1=0.40)
    rc, out, captured = _retrain(registry, api, package, tmp_path, "better2")
    assert rc == 0 and json.loads((out / "retrain.json").read_text())["outcome"] == "promoted", captured.err
    written = set(registry.snapshot()) - set(before)
    assert any("/champion-history/" in k for k in written) and any("/decisions/" in k for k in written)


def test_dry_run_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit):
        main(["retrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "writes nothing to the registry" in text and "<run_root>/dry-run-registry" in text


def test_a_dry_run_whose_scratch_registry_lies_inside_the_registry_is_refused(registry, api, package, tmp_path):
    registry.publish("champ")
    before = registry.snapshot()
    rc, _, captured = _retrain(registry, api, package, tmp_path, "x", "--dry-run",
                               "-p", f"run_root={registry.uri}/runs")
    assert rc == 2 and "inside the registry" in captured.err and api.posted("/runs") == []
    assert registry.snapshot() == before


def test_retrain_does_not_promote_a_challenger_that_fails_verification(registry, api, package, tmp_path):
    registry.publish("champ", edge_f1=0.30)
    assert registry.cli("promote", "champ").rc == 0
    registry.publish("better", edge_f1=0.40)
    registry.put(registry.stored_name("better", "adapter.onnx"), b"onnX")
    rc, out, captured = _retrain(registry, api, package, tmp_path, "better")
    result = json.loads((out / "retrain.json").read_text())
    assert rc == 6 and result["outcome"] == "unverified" and "adapter.onnx: sha256" in result["message"], captured.err
    assert registry.pointer()["version"] == "champ" and len(registry.history()) == 1
