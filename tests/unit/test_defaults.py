"""Defaults live in one place: the schema holds a real SDXL run, every preset sets every key, the
checkout's params.yaml is the toy preset, and `config show --sources` says where each value came
from."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from t2iops.cli import main
from t2iops.config import SDXL_BASE_MODEL, SYNTH_ROOT, Config, config_sources, leaf_keys, load_config, schema
from t2iops.presets import preset_config, preset_names, preset_path

REPO = Path(__file__).resolve().parents[2]


def test_params_yaml_is_the_toy_preset():
    """The demo's figures come from params.yaml; the toy preset must be that same run."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params == yaml.safe_load(preset_path("toy").read_text())
    assert load_config(REPO / "params.yaml") == preset_config("toy")


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_sets_every_key_of_the_schema(name):
    """A preset copied over params.yaml must hold every key DVC tracks; none may lean on a default."""
    data = yaml.safe_load(preset_path(name).read_text())
    assert leaf_keys(data) == leaf_keys(), name  # same keys, in the schema's order
    assert load_config(preset_path(name)).to_dict() == data


def test_schema_defaults_are_a_real_sdxl_run():
    cfg = Config()
    assert cfg.model.base_model == SDXL_BASE_MODEL == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (cfg.model.dtype, cfg.encode.resolution, cfg.export.resolutions) == ("fp16", 1024, [1024])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.max_steps) == (1e-5, 1, 4, 15000)
    assert (cfg.train.mixed_precision, cfg.train.timestep_sampling, cfg.evaluate.guidance_scale) == ("fp16", "cubic", 5.0)
    # No particular dataset: the synthetic circles are the toy preset's choice, not the schema's.
    assert cfg.data.root != SYNTH_ROOT and preset_config("toy").data.root == SYNTH_ROOT
    assert "SDXL" in schema.__doc__ and SDXL_BASE_MODEL in schema.__doc__
    for name, field in Config.model_fields.items():  # no description may call the toy run the default
        section = field.annotation
        for key, sub in getattr(section, "model_fields", {}).items():
            assert "toy default" not in (sub.description or ""), f"{name}.{key}"


def test_preset_config_applies_overrides():
    cfg = preset_config("toy", ["train.max_steps=3"])
    assert cfg.train.max_steps == 3 and cfg.model.base_model == "models/toy-base"


def test_sources_name_the_file_the_override_and_the_default(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("train:\n  lr: 0.001\nevaluate:\n  gate: {min_circle_iou: 0.5}\n")
    sources = config_sources(params, ["train.max_steps=3", "evaluate.conditioning_scales=[1, 0]"])
    assert set(sources) == set(leaf_keys())
    assert sources["train.lr"] == str(params)
    assert sources["evaluate.gate.min_circle_iou"] == str(params)
    assert sources["evaluate.gate.max_fid"] == "schema default"
    assert sources["train.max_steps"] == "-S train.max_steps=3"
    assert sources["evaluate.conditioning_scales"] == "-S evaluate.conditioning_scales=[1, 0]"
    assert sources["model.base_model"] == "schema default"
    # The last override of a key wins, as in the configuration itself; a section override sets its keys.
    later = config_sources(params, ["train.lr=1", "train.lr=0.5", "evaluate.gate={max_fid: 3}"])
    assert later["train.lr"] == "-S train.lr=0.5" and later["evaluate.gate.max_fid"] == "-S evaluate.gate={max_fid: 3}"


def test_config_show_sources_is_still_a_params_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.001\n")
    assert main(["config", "show", "--sources", "-S", "train.max_steps=7"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith("  lr: 0.001") and line.endswith("# params.yaml") for line in lines)
    assert any(line.startswith("  max_steps: 7") and line.endswith("# -S train.max_steps=7") for line in lines)
    assert any(line.startswith(f"  base_model: {SDXL_BASE_MODEL}") and line.endswith("# schema default")
               for line in lines)
    assert yaml.safe_load(captured.out) == load_config(tmp_path / "params.yaml", ["train.max_steps=7"]).to_dict()
    assert captured.err == ""  # a project folder: no notice
    # Without --sources the output is the plain resolved YAML.
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out == load_config(tmp_path / "params.yaml").to_yaml()


def test_outside_a_project_the_cli_says_it_uses_the_schema_defaults(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "t2iops.cli", "config", "show"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    notice = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(notice) == 1, proc.stderr
    assert "schema's defaults" in notice[0] and SDXL_BASE_MODEL in notice[0]
    assert f"--params {preset_path('toy')}" in notice[0]
    assert yaml.safe_load(proc.stdout) == Config().to_dict()
    # With --params the file decides and nothing is said.
    proc = subprocess.run([sys.executable, "-m", "t2iops.cli", "config", "show", "--params", str(preset_path("toy"))],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert yaml.safe_load(proc.stdout) == preset_config("toy").to_dict()


def test_config_presets_lists_each_preset_with_its_params(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "presets"]) == 0
    captured = capsys.readouterr()
    for name in preset_names():
        assert f"--params {preset_path(name)}" in captured.out
    assert captured.err == ""


def test_storage_settings_default_to_the_schema():
    from t2iops.config import StorageConfig
    from t2iops.storage import storage_settings

    assert storage_settings(None) == StorageConfig().model_dump()
    assert storage_settings(Config(storage={"verify": False}))["verify"] is False
