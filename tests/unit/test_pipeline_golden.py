"""The compiled pipeline is a pure function of its inputs: for the same run specification and
cluster settings, the IR YAML is byte-identical to the package kept in tests/golden/.

The golden packages were compiled from the project's params.yaml and pipelines/settings.yaml:

    t2iops pipeline compile -S model.base_model=s3://b/toy-base -o tests/golden/pipeline-default.yaml
    t2iops pipeline compile -S model.base_model=s3://b/toy-base --image reg.example/t2iops:1.2 \\
        -S train.lr=2e-5 -S evaluate.guidance_scale=3 -o tests/golden/pipeline-override.yaml
    (settings.yaml with train_launcher.kind: trainjob) ... -o tests/golden/pipeline-multinode.yaml

A change to the pipeline, a component body, params.yaml or settings.yaml changes them on purpose:
recompile with those commands and review the diff like code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from t2iops.config import load_config
from t2iops.pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
BASE = "model.base_model=s3://b/toy-base"


@pytest.fixture(autouse=True)
def _no_environment_overrides(monkeypatch):
    for name in ("T2IOPS_IMAGE", "T2IOPS_PIPELINE_SETTINGS", "T2IOPS_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)


def _same_bytes(built: Path, golden: str) -> None:
    expected = (GOLDEN / golden).read_bytes()
    got = built.read_bytes()
    if got != expected:
        import difflib

        diff = "".join(list(difflib.unified_diff(
            expected.decode().splitlines(True), got.decode().splitlines(True), golden, str(built)))[:60])
        pytest.fail(f"compiled pipeline differs from tests/golden/{golden}:\n{diff}")


def test_default_run_spec_compiles_to_the_golden_package(tmp_path):
    cfg = load_config(ROOT / "params.yaml", [BASE])
    _same_bytes(compile_pipeline(tmp_path / "p.yaml", cfg=cfg), "pipeline-default.yaml")


def test_overrides_and_image_compile_to_the_golden_package(tmp_path):
    cfg = load_config(ROOT / "params.yaml", [BASE, "train.lr=2e-5", "evaluate.guidance_scale=3"])
    built = compile_pipeline(tmp_path / "p.yaml", image="reg.example/t2iops:1.2", cfg=cfg)
    _same_bytes(built, "pipeline-override.yaml")


def test_multinode_settings_compile_to_the_golden_package(tmp_path):
    settings = tmp_path / "settings.yaml"
    text = (ROOT / "pipelines" / "settings.yaml").read_text()
    assert "kind: in-pod" in text
    settings.write_text(text.replace("kind: in-pod", "kind: trainjob"))
    cfg = load_config(ROOT / "params.yaml", [BASE])
    _same_bytes(compile_pipeline(tmp_path / "p.yaml", settings=settings, cfg=cfg), "pipeline-multinode.yaml")


def test_the_cli_compiles_the_same_package_twice_in_one_process_and_across_processes(tmp_path):
    """Building twice in one process gives the same bytes (nothing is left behind by a build),
    and the CLI's door gives the same package as the library's."""
    cfg = load_config(ROOT / "params.yaml", [BASE])
    first = compile_pipeline(tmp_path / "a.yaml", cfg=cfg).read_bytes()
    compile_pipeline(tmp_path / "other.yaml", image="reg.example/other:9", cfg=load_config(ROOT / "params.yaml", [BASE, "train.lr=3e-5"]))
    assert compile_pipeline(tmp_path / "b.yaml", cfg=cfg).read_bytes() == first
    cli = Path(sys.executable).with_name("t2iops")
    env = {k: v for k, v in os.environ.items() if not k.startswith("T2IOPS_")}
    done = subprocess.run([str(cli), "pipeline", "compile", "-S", BASE, "-o", str(tmp_path / "cli.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _same_bytes(tmp_path / "cli.yaml", "pipeline-default.yaml")
