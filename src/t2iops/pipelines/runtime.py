"""What a component does before and around its stage: read its ``config_<stage>`` parameter.

The resolved run specification (params.yaml + ``-S``) is split by stage: each KFP step receives
one string parameter holding only the sections its stage declares in ``config.STAGE_SECTIONS``
(plus ``storage``), so the step's cache key changes only when what it reads changes. A parameter
is YAML or JSON holding a mapping (nested sections and/or dotted keys, ``{"train.lr": 1e-5}``) or
a list of ``key.path=value`` items, the ``-S`` overrides of the CLI. It is validated by
:mod:`t2iops.config` when the pipeline is compiled or submitted and again in each component
before any work starts, so a bad key fails fast and names itself.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml

from ..config import RUNTIME_SECTIONS, Config, ConfigError, StageConfig, covered, load_config, stage_paths
from ..process import collect_once_at_exit

# The KFP steps and the stage whose sections each receives (merge is the evaluate stage's end).
KFP_STAGES = ("pull", "validate", "encode", "train", "evaluate", "export", "publish")


def parameter_name(stage: str) -> str:
    """The pipeline parameter that carries ``stage``'s configuration."""
    return f"config_{stage}"


def flatten_overrides(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}, "data.synth.count": 8}`` -> ``{"train.lr": 1, "data.synth.count": 8}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_overrides(value, path))
        else:
            flat[path] = value
    return flat


def parse_config_param(text: str | None) -> dict[str, Any] | list[str]:
    """The ``config`` parameter as overrides (dotted mapping or ``key=value`` list)."""
    if text is None or not str(text).strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline parameter 'config' is not valid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if isinstance(data, dict):
        return flatten_overrides(data)
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        return data
    raise ConfigError(
        "pipeline parameter 'config' must be a mapping of keys to values or a list of "
        f"'key.path=value' strings, got {type(data).__name__}"
    )


def config_from_param(text: str | None, stage: str | None = None) -> Config:
    """Validate a config parameter against the full schema; the error names the parameter and
    the key. With ``stage``, a key the stage does not read is an error too (it would be ignored)."""
    name = parameter_name(stage) if stage else "config"
    overrides = parse_config_param(text)
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        raise ConfigError(f"pipeline parameter {name!r}: {exc}") from None
    if stage:
        allowed = stage_paths(stage) + RUNTIME_SECTIONS
        given = overrides if isinstance(overrides, dict) else dict(o.split("=", 1) for o in overrides)
        stray = sorted(k for k in given if not covered(k.strip(), allowed))
        if stray:
            raise ConfigError(
                f"pipeline parameter {name!r} sets {', '.join(stray)}, which the {stage} stage does not read "
                f"(it reads: {', '.join(stage_paths(stage))})"
            )
    return cfg


def config_param(cfg_or_overrides: Config | dict[str, Any] | list[str], stage: str | None = None) -> str:
    """A config parameter value: a full Config (restricted to ``stage``'s sections when given)
    or overrides, as compact JSON with sorted keys (the same spec gives the same string)."""
    if isinstance(cfg_or_overrides, Config):
        data = StageConfig(cfg_or_overrides, stage).to_dict() if stage else cfg_or_overrides.to_dict()
        return json.dumps(data, sort_keys=True)
    if isinstance(cfg_or_overrides, list):
        return json.dumps(cfg_or_overrides)
    return json.dumps(flatten_overrides(cfg_or_overrides), sort_keys=True)


def stage_parameters(cfg: Config) -> dict[str, str]:
    """The run's configuration as the pipeline's ``config_<stage>`` parameters."""
    return {parameter_name(stage): config_param(cfg, stage) for stage in KFP_STAGES}


def stage_config(text: str | None, stage: str) -> StageConfig:
    """First line of every component: logging on, config validated, restricted to the stage."""
    collect_once_at_exit()  # the step's process ends ~2 s sooner (t2iops.process)
    logging.basicConfig(
        level=os.environ.get("T2IOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return StageConfig(config_from_param(text, stage), stage)
