"""dsl.If under kfp.local: a tiny two-branch pipeline proves the gate's condition is evaluated
(the branch runs when true and is skipped when false) with the translation run-local installs.
No __future__ annotations here: KFP reads the component signatures at definition time."""
from kfp import dsl, local

from t2iops.pipelines.kfp_workarounds import local_conditions_evaluated


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def decide(threshold: int) -> bool:
    return threshold < 3


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def mark(folder: str):
    import pathlib

    pathlib.Path(folder, "branch-ran").write_text("yes")


@dsl.pipeline
def gated(threshold: int, folder: str) -> bool:
    gate = decide(threshold=threshold)
    with dsl.If(gate.output == True, name="gate"):  # noqa: E712
        mark(folder=folder)
    return gate.output


def test_if_branch_runs_only_when_the_gate_passes(tmp_path):
    local_conditions_evaluated()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    yes, no = tmp_path / "yes", tmp_path / "no"
    yes.mkdir(), no.mkdir()
    assert gated(threshold=1, folder=str(yes)).output is True
    assert gated(threshold=5, folder=str(no)).output is False
    assert (yes / "branch-ran").exists() and not (no / "branch-ran").exists()
