"""One typed configuration for every stage.

* :mod:`~t2iops.config.schema`: the sections, their keys and defaults (a real SDXL run) and
  :class:`Config`;
* :mod:`~t2iops.config.loading`: params files, ``-S key=value`` overrides, validation errors
  that name the key, and where each value came from;
* :mod:`~t2iops.config.stages`: what each stage may read (:data:`STAGE_SECTIONS`) and the
  read-only :class:`StageConfig` view that enforces it.

Import from here (``from t2iops.config import Config, load_config``); the split is for readers.
"""
from __future__ import annotations

from .loading import (
    SCHEMA_DEFAULT,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_sources,
    load_config,
    parse_override,
    read_params,
    read_yaml_mapping,
    yaml_with_sources,
)
from .schema import (
    DATA_ROOT,
    SDXL_BASE_MODEL,
    SYNTH_ROOT,
    TOY_BASE_MODEL,
    Config,
    DataConfig,
    EncodeConfig,
    EvaluateConfig,
    ExportConfig,
    GateConfig,
    ModelConfig,
    RegistryConfig,
    StorageConfig,
    SynthConfig,
    ToyBaseConfig,
    TrainConfig,
    leaf_keys,
)
from .stages import (
    ALL_SECTIONS,
    RUNTIME_SECTIONS,
    STAGE_SECTIONS,
    StageConfig,
    covered,
    dvc_params,
    restrict_dict,
    stage_paths,
    stage_values,
)

__all__ = [
    "ALL_SECTIONS", "DATA_ROOT", "RUNTIME_SECTIONS", "SCHEMA_DEFAULT", "SDXL_BASE_MODEL", "STAGE_SECTIONS",
    "SYNTH_ROOT", "TOY_BASE_MODEL", "Config", "ConfigError", "DataConfig", "EncodeConfig", "EvaluateConfig",
    "ExportConfig", "GateConfig", "ModelConfig", "RegistryConfig", "StageConfig", "StorageConfig", "SynthConfig",
    "ToyBaseConfig", "TrainConfig", "apply_overrides", "config_from_dict", "config_sources", "covered",
    "dvc_params", "leaf_keys", "load_config", "parse_override", "read_params", "read_yaml_mapping", "restrict_dict",
    "stage_paths", "stage_values", "yaml_with_sources",
]
