"""Ready-made configurations. Pass a preset's file to ``--params`` (in a checkout:
``--params src/t2iops/presets/toy.yaml``); :func:`preset_path` finds it in an installed package.
Every preset is a complete params file (every key, as DVC needs for what dvc.yaml tracks and
templates): copy it over ``params.yaml`` to run it with ``dvc repro export`` / ``dvc exp run``.

* ``toy.yaml``: the embedded default (offline, CPU, synthetic circles, the toy base model).
* ``sdxl-fill50k-diffengine.yaml``: diffengine's ``stable_diffusion_xl_t2i_adapter_fill50k``.
* ``sdxl-fill50k-diffusers.yaml``: the diffusers ``train_t2i_adapter_sdxl.py`` fill50k recipe.
"""
from __future__ import annotations

from pathlib import Path

PRESETS_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (with or without ``.yaml``)."""
    path = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        from ..errors import UsageError

        raise UsageError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return path
