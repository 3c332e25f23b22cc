"""The CLI shell: help for every command, exit codes, one-line errors on stderr."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from t2iops.cli import build_parser, main


def _leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_commands(child, prefix + (name,))


def test_every_command_has_help_that_explains_itself(capsys):
    leaves = list(_leaf_commands(build_parser()))
    assert len(leaves) >= 2
    for path, parser in leaves:
        text = parser.format_help()
        assert parser.description or any(
            a.help for a in parser._actions if a.dest not in ("help",)
        ), f"t2iops {' '.join(path)} has no description"
        with pytest.raises(SystemExit) as exc:
            main(list(path) + ["--help"])
        assert exc.value.code == 0, path
        assert "--params" in text or path[0] == "config", path


def test_config_show_prints_resolved_yaml(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "-S", "train.lr=0.5"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["lr"] == 0.5


def test_bad_override_exits_2_with_one_line_reason(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "-S", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.nope" in err[0] and err[0].startswith("t2iops config: error:")


def test_console_script_runs_as_a_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "t2iops.cli", "config", "show", "-S", "train.batch_size=-1"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "train.batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_command_reference_is_current():
    """docs/cli.md is generated from the parsers; regenerate with scripts/gen_cli_docs.py."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_cli_docs", root / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (root / "docs" / "cli.md").read_text() == mod.render(), "run scripts/gen_cli_docs.py"


def _subparsers_of(parser: argparse.ArgumentParser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def test_top_level_help_lists_the_workflow_in_order():
    parser = build_parser()
    text = parser.format_help()
    order = ["data synth", "data validate", "toy-base", "encode", "train", "evaluate", "export", "pipeline",
             "registry, retrain", "generate, serve"]
    positions = [text.find(f"{n:>2}. {name}") for n, name in enumerate(order, 1)]
    assert -1 not in positions and positions == sorted(positions), text
    named = {"config", "model"}  # the commands for any time, after the steps
    for name in order:  # each step names a real command
        for command in name.split(", "):
            _subparser(parser, *command.split())
            named.add(command.split()[0])
    assert named == set(_subparsers_of(parser)), "place every top-level command in the workflow of cli.DESCRIPTION"


def test_pipeline_help_lists_every_run_parameter_of_the_real_pipeline():
    from t2iops.config import load_config
    from t2iops.pipelines.compile import build_pipeline
    from t2iops.pipelines.parameters import RUN_PARAMETERS
    from t2iops.pipelines.settings import load_settings

    inputs = build_pipeline(load_config(None), load_settings(None)).component_spec.inputs
    assert list(RUN_PARAMETERS) == list(inputs), "keep t2iops/pipelines/parameters.py equal to build_pipeline's inputs"
    parser = build_parser()
    for action in ("compile", "submit", "schedule", "run-local"):
        lines = _subparser(parser, "pipeline", action).format_help().splitlines()
        for name in inputs:
            assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in lines), (action, name)
