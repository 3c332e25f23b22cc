"""KFP v2 components of the training pipeline: one file per stage, thin doors into the stage
functions of the ``t2iops`` package (no logic of their own).

Every component is a lightweight Python component whose body imports ``t2iops`` and calls one
stage function. In a cluster it runs in the project image (``image`` in pipelines/settings.yaml
or ``T2IOPS_IMAGE``; the image already has kfp, so nothing is pip-installed at run time); under
``kfp.local.SubprocessRunner(use_venv=False)`` it runs in the current environment. Each takes the
sections of the configuration its stage reads as the ``config`` string parameter (the pipeline's
``config_<stage>``), validated and restricted to that stage before work.
"""
from __future__ import annotations

import functools

from kfp import dsl

from t2iops.pipelines.settings import load_settings


@functools.lru_cache(maxsize=None)
def _image() -> str:
    return load_settings().image


def component(func):
    """``@dsl.component`` in the project image, with kfp taken from the image."""
    return dsl.component(func, base_image=_image(), install_kfp_package=False)
