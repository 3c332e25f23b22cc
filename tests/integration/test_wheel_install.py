"""The wheel carries the pipeline: built from this checkout, installed into a fresh virtual
environment outside it, ``t2iops pipeline compile`` gives the same package as the checkout, and
``t2iops pipeline run-local`` runs every step of it from the installed copy.

The fresh environment gets only the wheel (``--no-deps``, no index); its dependencies (torch,
kfp, ...) are read from the test environment's site-packages through a plain path line, which
adds that folder to ``sys.path`` without running its ``.pth`` files, so the checkout's editable
install stays out and every ``t2iops`` import resolves to the wheel's copy (the test checks it)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = "model.base_model=s3://b/toy-base"


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, t2iops script, environment, a folder outside the checkout) of a fresh venv holding the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("T2IOPS_", "PYTHON"))}
    source = tmp / "source"  # what the image build copies too; building in the checkout would leave build/ there
    for name in ("pyproject.toml", "setup.py", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for name in ("src", "components", "pipelines"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(source)], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("t2iops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "t2iops/_project/pipelines/training.py" in names and "t2iops/_project/components/train.py" in names
    assert "t2iops/_project/pipelines/settings.yaml" in names
    assert not [n for n in names if n.split("/")[0] in ("components", "pipelines")]  # nothing generic at the top

    venv = tmp / "venv"
    _run([sys._base_executable, "-m", "venv", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp, env=env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp, env=env).stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp / "elsewhere"
    outside.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(python), "-c", "import t2iops, t2iops._project.pipelines.training as t; print(t2iops.__file__); print(t.__file__)"],
                 cwd=outside, env=env).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where
    return python, venv / "bin" / "t2iops", env, outside


@pytest.mark.slow
def test_the_installed_wheel_compiles_the_same_package_as_the_checkout(installed):
    _, t2iops, env, outside = installed
    _run([str(t2iops), "pipeline", "compile", "--params", str(ROOT / "params.yaml"), "-S", BASE,
          "-o", str(outside / "p.yaml")], cwd=outside, env=env)
    assert (outside / "p.yaml").read_bytes() == (ROOT / "tests" / "golden" / "pipeline-default.yaml").read_bytes()
    # Outside a project folder and without --params: the schema's defaults, said so, and it compiles.
    done = _run([str(t2iops), "pipeline", "compile", "-S", BASE, "-o", str(outside / "defaults.yaml")], cwd=outside, env=env)
    assert (outside / "defaults.yaml").exists(), done.stderr


@pytest.mark.slow
def test_the_installed_wheel_runs_the_pipeline_locally(installed):
    _, t2iops, env, outside = installed
    done = _run([str(t2iops), "pipeline", "run-local", "--params", str(ROOT / "params.yaml"),
                 "--work", str(outside / "run"), "-S", "evaluate.gate.min_circle_iou=null", "-S", "train.max_steps=3"],
                cwd=outside, env=env, timeout=1500)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["gate_passed"] is True, done.stderr[-3000:]
    # --smoke shrinks every stage but never a key the user set: 3 steps, not the smoke size's 2
    assert "--smoke: kept your -S for train.max_steps" in done.stderr
    (summary,) = (outside / "run" / "runs").rglob("train/summary.json")
    assert json.loads(summary.read_text())["steps"] == 3
    registry = Path(outcome["registry_uri"]) / "t2i-adapter"
    (version,) = [p for p in registry.iterdir() if p.is_dir()]
    files = json.loads((version / "_manifest.json").read_text())["files"]
    assert {"adapter.onnx", "export.json", "metrics.json", "lineage.json"} <= set(files)
