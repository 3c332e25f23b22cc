"""The training pipeline's run parameters, one line each: what ``t2iops pipeline compile | submit
| schedule | run-local --help`` list. Kept here, away from kfp, so that ``--help`` stays instant;
a test keeps the names equal to the inputs of :func:`build_pipeline` in ``pipelines/training.py``.
"""
from __future__ import annotations

from .runtime import KFP_STAGES, parameter_name

_STAGE_NOTE = {"encode": "s (shards, merge)", "evaluate": "s (shards, merge)"}

RUN_PARAMETERS: dict[str, str] = {
    **{
        parameter_name(stage): f"config sections of the {stage} step{_STAGE_NOTE.get(stage, '')}, JSON "
        "(default: --params, -S)"
        for stage in KFP_STAGES
    },
    "data_source": "'dvc' | 'synth' | a dataset folder or s3:// URI (default: data.root; synth for data/circles)",
    "dvc_repo": "git URL of the repository holding the DVC-tracked dataset (data_source=dvc)",
    "dvc_rev": "git revision of dvc_repo (default main)",
    "dvc_path": "the dataset's folder in dvc_repo (default data/circles)",
    "dvc_remote": "DVC remote to pull from (default: dvc_repo's default remote)",
    "run_root": "prefix of the run's checkpoints, encode and evaluation shards (default: the settings')",
    "encode_shards": "encode shards, [0, 1, ..., n-1], one GPU each (default [0])",
    "eval_shards": "evaluation shards, [0, 1, ..., n-1] (default [0, 1])",
    "train_nodes": "nodes of the multi-node training job (train_launcher.kind not in-pod; default 1)",
    "gpus_per_node": "GPUs per node of that job (default 1)",
    "registry_uri": "the registry prefix the model is published to (default: the settings')",
    "model_name": "the model's name in the registry (default t2i-adapter)",
    "model_version": "the version it is published as (default: the run id)",
    "git_sha": "commit of the code the run was built from, recorded in lineage.json",
}


def run_parameters_help() -> str:
    """The parameters as a help epilog: one line each."""
    width = max(map(len, RUN_PARAMETERS))
    lines = ["run parameters of the pipeline (-p NAME=VALUE; all have defaults):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in RUN_PARAMETERS.items()]
    return "\n".join(lines)
