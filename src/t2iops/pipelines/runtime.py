"""What a component does before and around its stage: read the ``config`` parameter.

The training pipeline passes the configuration as ONE string parameter: YAML or JSON holding
either a mapping (nested sections and/or dotted keys, ``{"train.lr": 1e-5}``) or a list of
``key.path=value`` items, exactly the ``-S`` overrides of the CLI. It is validated by
:mod:`t2iops.config` when the pipeline is compiled or submitted and again in each component
before any work starts, so a bad key fails fast and names itself.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml

from ..config import Config, ConfigError, load_config


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


def config_from_param(text: str | None) -> Config:
    """Validate the ``config`` parameter against the full schema; the error names the key."""
    overrides = parse_config_param(text)
    try:
        return load_config(None, overrides)
    except ConfigError as exc:
        raise ConfigError(f"pipeline parameter 'config': {exc}") from None


def config_param(cfg_or_overrides: Config | dict[str, Any] | list[str]) -> str:
    """The ``config`` parameter for a run: a full Config or overrides, as compact JSON."""
    if isinstance(cfg_or_overrides, Config):
        return json.dumps(cfg_or_overrides.to_dict(), sort_keys=True)
    if isinstance(cfg_or_overrides, list):
        return json.dumps(cfg_or_overrides)
    return json.dumps(flatten_overrides(cfg_or_overrides), sort_keys=True)


def stage_config(text: str | None) -> Config:
    """First line of every component: logging on, config validated."""
    logging.basicConfig(
        level=os.environ.get("T2IOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return config_from_param(text)
