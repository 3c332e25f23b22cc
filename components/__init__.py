"""KFP v2 components of the training pipeline: one file per stage, thin doors into the stage
functions of the ``t2iops`` package (no logic of their own).

Each file holds plain Python functions; :func:`build_components` turns them into lightweight
KFP components for one container image. In a cluster every step runs in the project image
(``image`` in pipelines/settings.yaml, ``--image`` or ``T2IOPS_IMAGE``; the image already has
kfp, so nothing is pip-installed at run time); under ``kfp.local.SubprocessRunner(use_venv=False)``
it runs in the current environment. Each takes the sections of the configuration its stage reads
as the ``config`` string parameter (the pipeline's ``config_<stage>``), validated and restricted
to that stage before work. Being plain functions, they can also be called directly (tests do).
"""
from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from . import data, encode, evaluate, export, publish, train

FUNCTIONS = (
    data.pull_dataset, data.validate_dataset,
    encode.encode_shard, encode.merge_cache,
    train.train_adapter, train.train_adapter_multinode,
    evaluate.evaluate_shard, evaluate.merge_evaluation,
    export.export_adapter,
    publish.publish_model,
)


def build_components(image: str) -> SimpleNamespace:
    """Every component of the pipeline, running in ``image``, by function name."""
    return SimpleNamespace(**{
        func.__name__: dsl.component(func, base_image=image, install_kfp_package=False) for func in FUNCTIONS
    })
