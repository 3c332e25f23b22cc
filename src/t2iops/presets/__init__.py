"""Ready-made configurations. Pass a preset's file to ``--params`` (in a checkout:
``--params src/t2iops/presets/toy.yaml``); :func:`preset_path` finds it in an installed package.
Every preset is a complete params file (every key, as DVC needs for what dvc.yaml tracks and
templates): copy it over ``params.yaml`` to run it with ``dvc repro export`` / ``dvc exp run``.

* ``toy.yaml``: offline, CPU, synthetic circles, the toy base model: the demo, and the values of
  the checkout's ``params.yaml``.
* ``sdxl-fill50k-diffengine.yaml``: diffengine's ``stable_diffusion_xl_t2i_adapter_fill50k``.
* ``sdxl-fill50k-diffusers.yaml``: the diffusers ``train_t2i_adapter_sdxl.py`` fill50k recipe,
  whose model, encode, train and export values are also the schema's defaults.

Without a params file every key takes the schema's default (a real SDXL run); a preset sets
all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    """The presets' names (their file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (with or without ``.yaml``)."""
    path = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        from ..errors import UsageError

        raise UsageError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return path


def preset_summary(name: str) -> str:
    """The first line of the preset's leading comment: what it is, in one line."""
    for line in preset_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip().rstrip(":")
        if line.strip():
            break
    return ""


def preset_config(name: str, overrides: list[str] | dict[str, Any] | None = None):
    """The :class:`~t2iops.config.Config` of preset ``name`` with ``-S``-style ``overrides``
    (e.g. ``preset_config("toy", ["train.max_steps=2"])``)."""
    from ..config import load_config

    return load_config(preset_path(name), overrides)
