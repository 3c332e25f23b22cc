"""One run specification, three doors: what each stage declares it reads (config.STAGE_SECTIONS)
is what dvc.yaml tracks, what the CLI hands the stage, and what the compiled KFP step receives,
with the same resolved values from params.yaml."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from t2iops.cli import build_parser, stage_config_from_args
from t2iops.config import (
    RUNTIME_SECTIONS, STAGE_SECTIONS, Config, ConfigError, StageConfig, dvc_params, load_config, stage_values,
)
from t2iops.presets import PRESETS_DIR, preset_names

REPO = Path(__file__).resolve().parents[2]
DVC_STAGES = ("synth", "validate", "toy_base", "encode", "train", "evaluate", "export")
KFP_STEP = {"synth": "pull", "validate": "validate", "encode": "encode", "train": "train", "evaluate": "evaluate",
            "export": "export"}  # toy_base builds the embedded default base: no cluster step


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _leaf_keys(data: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys |= _leaf_keys(value, path + ".") if isinstance(value, dict) and value else {path}
    return keys


def test_dvc_params_are_exactly_what_each_stage_declares():
    stages = _dvc_yaml()["stages"]
    assert set(stages) == set(DVC_STAGES)
    for name in DVC_STAGES:
        assert stages[name].get("params", []) == dvc_params(name), name
        assert not set(stages[name].get("params", [])) & set(RUNTIME_SECTIONS), name
    schema_keys = _leaf_keys(Config().to_dict())
    for name, paths in STAGE_SECTIONS.items():  # every declared path names a real key or section
        for path in paths:
            assert path == "*" or any(k == path or k.startswith(path + ".") for k in schema_keys), (name, path)


def test_a_stage_reading_outside_its_declaration_fails_loudly():
    cfg = load_config(REPO / "params.yaml")
    train = StageConfig(cfg, "train")
    assert train.train.lr == cfg.train.lr and train.evaluate.seed == cfg.evaluate.seed
    assert train.storage.max_attempts == cfg.storage.max_attempts  # runtime section: every stage
    with pytest.raises(ConfigError, match=r"stage 'train' reads evaluate\.num_samples"):
        train.evaluate.num_samples
    with pytest.raises(ConfigError, match=r"stage 'encode' reads train"):
        StageConfig(cfg, "encode").train
    with pytest.raises(ConfigError, match=r"stage 'export' reads data\.max_size"):
        StageConfig(cfg, "export").data.max_size
    with pytest.raises(ConfigError, match="read-only"):
        train.seed = 3
    # What a stage writes beside its outputs is what it read.
    assert set(yaml.safe_load(StageConfig(cfg, "encode").to_yaml())) == {"storage", "data", "model", "encode"}


@pytest.mark.parametrize("name", preset_names())
def test_presets_are_complete_params_files(name):
    """DVC needs every key it tracks or templates in params.yaml: a preset copied over params.yaml
    must hold all of them, and be valid."""
    data = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
    assert _leaf_keys(data) == _leaf_keys(Config().to_dict()), name
    load_config(PRESETS_DIR / f"{name}.yaml")


def test_params_yaml_is_complete():
    assert _leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text())) == _leaf_keys(Config().to_dict())


def _dvc_commands(tmp_path: Path, params: Path) -> dict[str, str]:
    """The stage commands as DVC resolves them (templating from params.yaml included)."""
    from dvc.repo import Repo

    proj = tmp_path / "dvc"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy(params, proj / "params.yaml")
    Repo.init(str(proj), no_scm=True)
    with Repo(str(proj)) as repo:
        return {stage.name: stage.cmd for stage in repo.index.stages}


@pytest.mark.slow  # compiles the pipeline and opens a DVC repository: ~40 s on two busy cores
def test_cli_dvc_and_kfp_give_each_stage_the_same_resolved_values(tmp_path, monkeypatch):
    from t2iops.pipelines.compile import compile_pipeline, parameter_specs, read_package
    from t2iops.pipelines.runtime import config_from_param, parameter_name

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["model"]["base_model"] = "s3://models/sdxl"  # a base model a cluster can load
    data["train"]["lr"] = 3.0e-4
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_config(params)
    commands = _dvc_commands(tmp_path, params)
    package = read_package(compile_pipeline(tmp_path / "p.yaml", cfg=load_config(REPO / "params.yaml", [
        "model.base_model=s3://models/sdxl", "train.lr=3.0e-4"])))
    kfp_defaults = {n: s.get("defaultValue") for n, s in parameter_specs(package).items()}

    monkeypatch.chdir(params.parent)  # the CLI reads ./params.yaml, as under `dvc repro`
    parser = build_parser()
    for stage in DVC_STAGES:
        expected = stage_values(spec, stage)
        argv = shlex.split(commands[stage])
        assert argv[0] == "scripts/t2iops", commands[stage]  # the checkout's .venv, else PATH
        dvc_args = parser.parse_args(argv[1:])
        assert dvc_args.stage == stage, commands[stage]
        dvc_door = stage_config_from_args(dvc_args).to_dict()
        cli_door = stage_config_from_args(parser.parse_args([*argv[1:], "--params", str(params)])).to_dict()
        assert dvc_door == cli_door == expected, stage
        if stage in KFP_STEP:
            step = KFP_STEP[stage]
            kfp_door = StageConfig(config_from_param(kfp_defaults[parameter_name(step)], step), step).to_dict()
            assert kfp_door == stage_values(spec, step), stage
            assert json.loads(kfp_defaults[parameter_name(step)]) == stage_values(spec, step)
            if step == stage:
                assert kfp_door == expected, stage
    assert stage_values(spec, "train")["train"]["lr"] == 3.0e-4
    assert "data/circles" in commands["validate"]  # ${data.root} resolved by DVC
