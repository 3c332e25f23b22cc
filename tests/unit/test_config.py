"""The typed configuration: loading, overrides and errors that name the key."""
from __future__ import annotations

import pytest
import yaml

from t2iops.config import Config, ConfigError, load_config, parse_override


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    path = cfg.write(tmp_path)
    again = load_config(path)
    assert again == cfg
    assert again.train.timestep_sampling == "cubic"


def test_override_sets_nested_value_with_yaml_typing():
    cfg = load_config(None, ["train.lr=1e-5", "data.synth.count=12", "evaluate.conditioning_scales=[0.5, 1.0]"])
    assert cfg.train.lr == pytest.approx(1e-5)
    assert cfg.data.synth.count == 12
    assert cfg.evaluate.conditioning_scales == [0.5, 1.0]


def test_params_file_then_overrides_win(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"train": {"lr": 0.001, "batch_size": 4}}))
    cfg = load_config(p, ["train.batch_size=16"])
    assert cfg.train.lr == pytest.approx(0.001)
    assert cfg.train.batch_size == 16


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.lrr=1e-5"])
    msg = str(exc.value)
    assert "train.lrr" in msg
    assert "unknown key" in msg and "lr" in msg and "batch_size" in msg


def test_unknown_top_level_section_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.batch_size=many"])
    assert "train.batch_size" in str(exc.value)
    assert "many" in str(exc.value)


def test_out_of_range_names_key_and_bound():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.caption_dropout=1.5"])
    msg = str(exc.value)
    assert "train.caption_dropout" in msg and "1" in msg


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.timestep_sampling=logit"])
    msg = str(exc.value)
    assert "train.timestep_sampling" in msg and "'cubic'" in msg and "'uniform'" in msg


def test_cross_field_rule_is_enforced():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, ["data.val_fraction=0.6", "data.test_fraction=0.5"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..lr=1")
    with pytest.raises(ConfigError, match="^invalid configuration.*seed"):
        load_config(None, ["seed.x=1"])
    with pytest.raises(ConfigError, match="train.lr is not a section"):
        load_config(None, ["train.lr=1", "train.lr.x=2"])


def test_missing_or_malformed_params_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_fingerprint_tracks_only_named_sections():
    a = load_config()
    b = load_config(None, ["train.lr=0.5"])
    assert a.fingerprint("encode", "model") == b.fingerprint("encode", "model")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_repo_params_yaml_is_valid():
    from pathlib import Path

    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert isinstance(load_config(params), Config)


def test_repo_params_yaml_lists_every_key():
    """DVC tracks params by key: a key missing from params.yaml is invisible to `dvc repro`."""
    from pathlib import Path

    params = Path(__file__).resolve().parents[2] / "params.yaml"
    data = yaml.safe_load(params.read_text())

    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    missing = set(keys(Config().to_dict())) - set(keys(data))
    assert not missing, f"params.yaml lacks {sorted(missing)}: run scripts/refresh_params.py"
