"""Build the training pipeline for a run specification, validate its run parameters, compile it
to IR YAML.

The pipeline is :func:`build_pipeline` of ``pipelines/training.py`` (importable as
``t2iops._project.pipelines.training`` from a checkout or an installed wheel): a plain function of
the resolved run specification (params.yaml + --params/-S) and the cluster settings
(pipelines/settings.yaml), whose result kfp compiles. The specification becomes the defaults of
the ``config_<stage>`` parameters, so the package runs what params.yaml says even when started
from the KFP UI.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import UsageError
from .kfp_workarounds import quick_caller_names
from .settings import PipelineSettings, find_project_root, load_settings


def build_pipeline(spec: Any, settings: PipelineSettings):
    """The KFP pipeline for ``spec`` (a resolved Config) on the cluster ``settings`` describe."""
    from t2iops._project.pipelines.training import build_pipeline as build

    with quick_caller_names(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp's note about its default base image
        return build(spec, settings)


def project_spec():
    """The run specification of the project folder: its params.yaml (else the schema's defaults)."""
    from ..config import load_config

    params = find_project_root() / "params.yaml"
    return load_config(params if params.exists() else None)


def compile_pipeline(
    output: str | Path, settings: Optional[str | Path] = None, image: Optional[str] = None, cfg: Any = None,
) -> Path:
    """Write the pipeline's IR YAML to ``output`` after checking its default parameters; ``cfg``
    (the resolved run specification; None: the project's params.yaml) becomes the defaults of the
    ``config_<stage>`` parameters; ``settings`` is the settings file, ``image`` replaces its image."""
    from kfp import compiler

    pipeline = build_pipeline(cfg if cfg is not None else project_spec(), load_settings(settings, image=image))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    validate_arguments(read_package(output), {})
    return output


def read_package(path: str | Path) -> dict[str, Any]:
    """The pipeline spec document of a compiled package (the first YAML document)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"pipeline package {path} does not exist (run `t2iops pipeline compile` first)")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not docs or "root" not in docs[0]:
        raise UsageError(f"{path} is not a compiled KFP pipeline (no root)")
    return docs[0]


# ---------------------------------------------------------------------------------------
# Run parameters
_PARSED = {"NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN", "LIST", "STRUCT"}


def parameter_specs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def parse_cli_parameters(items: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """``-p name=value`` strings to typed values (per the package's parameter types)."""
    specs = parameter_specs(spec)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"-p {item!r} must look like name=value")
        name, raw = item.split("=", 1)
        name = name.strip()
        if name not in specs:
            raise UsageError(f"unknown pipeline parameter {name!r}; parameters: {', '.join(sorted(specs))}")
        kind = specs[name].get("parameterType", "STRING")
        if kind in _PARSED:
            try:
                out[name] = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise UsageError(f"pipeline parameter {name!r}: {raw!r} is not valid YAML ({exc})") from None
        else:
            out[name] = raw
    return out


def _integral(value: Any, kind: str) -> Any:
    """Protobuf stores every number as a double: 1.0 -> 1 where the parameter is an integer,
    and integral list items (the shard list) back to ints."""
    if kind == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "LIST" and isinstance(value, list):
        return [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
    return value


_TYPES = {
    "STRING": (str,), "NUMBER_INTEGER": (int,), "NUMBER_DOUBLE": (int, float), "BOOLEAN": (bool,),
    "LIST": (list,), "STRUCT": (dict,),
}


def validate_arguments(spec: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """Check run arguments (and the defaults they leave in place) before anything is submitted;
    every error names the parameter. Returns the arguments, unchanged."""
    from .registry import check_name
    from .runtime import KFP_STAGES, config_from_param, parameter_name
    from .steps import check_shards

    specs = parameter_specs(spec)
    unknown = sorted(set(arguments) - set(specs))
    if unknown:
        raise UsageError(f"unknown pipeline parameter(s) {', '.join(unknown)}; parameters: {', '.join(sorted(specs))}")
    values: dict[str, Any] = {}
    for name, pspec in specs.items():
        kind = pspec.get("parameterType", "STRING")
        value = _integral(arguments.get(name, pspec.get("defaultValue")), kind)
        if value is None and not pspec.get("isOptional"):
            raise UsageError(f"pipeline parameter {name!r} is required")
        if value is not None and (not isinstance(value, _TYPES.get(kind, (object,))) or (kind == "NUMBER_INTEGER" and isinstance(value, bool))):
            raise UsageError(f"pipeline parameter {name!r} must be {kind.lower().replace('_', ' ')}, got {value!r}")
        values[name] = value

    for stage in KFP_STAGES:
        if parameter_name(stage) in values:
            config_from_param(values[parameter_name(stage)], stage)
    for name in ("encode_shards", "eval_shards"):
        if name in values:
            try:
                check_shards(values[name], name)
            except UsageError as exc:
                raise UsageError(str(exc)) from None
    for name in ("train_nodes", "gpus_per_node"):
        if name in values and values[name] < 1:
            raise UsageError(f"pipeline parameter {name!r} must be >= 1, got {values[name]}")
    source = values.get("data_source", "")
    if not str(source).strip():
        raise UsageError("pipeline parameter 'data_source' is empty: use 'dvc', 'synth' or a folder / s3:// URI")
    if source == "dvc":
        for name in ("dvc_repo", "dvc_rev", "dvc_path"):
            if not values.get(name):
                raise UsageError(f"pipeline parameter {name!r} is required when data_source is 'dvc'")
    for name in ("run_root", "registry_uri"):
        if name in values and not str(values[name]).strip():
            raise UsageError(f"pipeline parameter {name!r} is empty")
    if "model_name" in values:
        check_name(values["model_name"], "model_name")
    if values.get("model_version"):
        check_name(values["model_version"], "model_version")
    if values.get("git_sha") and not re.fullmatch(r"[0-9a-f]{7,64}", str(values["git_sha"])):
        raise UsageError("pipeline parameter 'git_sha' must be a commit id (7 to 64 lowercase hex digits), "
                         f"got {values['git_sha']!r}")
    return arguments
