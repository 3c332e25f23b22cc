"""What each stage may read of the configuration, and the read-only view that enforces it.

A stage that silently reads another stage's settings re-runs (DVC) or misses the cache (KFP)
too rarely: a change to what it really depends on goes unnoticed. So each stage declares the
dotted paths it reads in :data:`STAGE_SECTIONS`, receives a :class:`StageConfig` holding only
those (plus the runtime sections), and ``dvc.yaml``'s ``params:`` and each KFP step's inputs
are derived from the same declaration.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .loading import ConfigError
from .schema import Config
from .serialise import _Serialised

# What each stage reads. A stage receives a view of the resolved config restricted to these
# dotted paths (a section, a sub-section or one key) plus the runtime sections; reading
# anything else raises ConfigError naming the stage and the key. dvc.yaml's `params:` lists
# exactly these paths (tests/unit/test_stage_sections.py checks it) and each KFP step receives
# exactly these values, so a stage re-runs (DVC) or misses the cache (KFP) only when what it
# reads changed. Cross-section reads are declared here on purpose, with the reason beside them.
RUNTIME_SECTIONS = ("storage",)  # where data lives and how to reach it, not what a stage computes
ALL_SECTIONS = "*"
# the synthetic rows are written under the configured column names
_SYNTH = ("data.synth", "data.image_column", "data.conditioning_image_column", "data.caption_column", "data.id_column")
# validate, encode and evaluate read rows through the one dataset reader (columns, limits, split)
_DATASET = (
    "data.root", "data.image_column", "data.conditioning_image_column", "data.caption_column", "data.id_column",
    "data.min_size", "data.max_size", "data.max_pixels", "data.resize_policy", "data.max_bad_fraction",
    "data.val_fraction", "data.test_fraction",
)
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": _SYNTH,
    # pull (KFP only) synthesizes the circles when data_source is 'synth'
    "pull": _SYNTH,
    "validate": _DATASET,
    # the toy base learns the synthetic circles; model.base_model is its default output folder
    "toy_base": ("toy_base", "data.synth", "model.base_model"),
    "encode": (*_DATASET, "model", "encode"),
    # validation during training samples like the evaluation does (same fidelity metric, seeds, CFG)
    "train": ("model", "train", "evaluate.condition_kind", "evaluate.seed", "evaluate.guidance_scale"),
    # evaluate.resolution defaults to the resolution the adapter was trained (encoded) at; each
    # sample is generated at its aspect-ratio bucket's size (encode.buckets)
    "evaluate": (*_DATASET, "model", "encode.resolution", "encode.buckets", "evaluate"),
    # the parity check draws synthetic circle conditions (seed, data.synth) at the training
    # buckets' shapes (encode.resolution, encode.buckets); the serving manifest records the
    # buckets, the generation settings the evaluation used and the training data root
    "export": (
        "seed", "data.root", "data.synth", "model", "encode.resolution", "encode.buckets",
        "train.conditioning_scale", "evaluate.guidance_scale", "evaluate.conditioning_scales",
        "evaluate.conditioning_factor", "export",
    ),
    # the registry keeps the whole resolved configuration beside the published model
    "publish": (ALL_SECTIONS,),
}


def stage_paths(stage: str) -> tuple[str, ...]:
    """The dotted paths ``stage`` declares (without the runtime sections)."""
    try:
        return STAGE_SECTIONS[stage]
    except KeyError:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_SECTIONS)}") from None


def covered(path: str, allowed: tuple[str, ...]) -> bool:
    """Whether the dotted ``path`` lies in one of the ``allowed`` paths."""
    return any(a == ALL_SECTIONS or path == a or path.startswith(a + ".") for a in allowed)


def _partly_covered(path: str, allowed: tuple[str, ...]) -> bool:
    return any(a.startswith(path + ".") for a in allowed)


def restrict_dict(data: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """The part of a nested config dict that ``allowed`` (dotted paths) covers."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if covered(path, allowed):
            out[key] = value
        elif isinstance(value, dict) and _partly_covered(path, allowed):
            out[key] = restrict_dict(value, allowed, path + ".")
    return out


class StageConfig(_Serialised):
    """A read-only view of a :class:`Config` holding only what one stage declares in
    :data:`STAGE_SECTIONS` (plus the runtime sections). A declared section or key reads as
    usual (the real pydantic object); anything else raises :class:`ConfigError` naming the
    stage and the key, so a stage cannot silently depend on another stage's settings."""

    def __init__(self, cfg: Config | BaseModel, stage: str, allowed: tuple[str, ...] | None = None, prefix: str = ""):
        if allowed is None:
            allowed = stage_paths(stage) + RUNTIME_SECTIONS
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_prefix", prefix)

    @property
    def stage(self) -> str:
        return self._stage

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        path = f"{self._prefix}{name}"
        value = getattr(self._cfg, name)
        if covered(path, self._allowed):
            return value
        if isinstance(value, BaseModel) and _partly_covered(path, self._allowed):
            return StageConfig(value, self._stage, self._allowed, path + ".")
        declared = ", ".join(p for p in self._allowed if p not in RUNTIME_SECTIONS) or "nothing"
        raise ConfigError(
            f"stage {self._stage!r} reads {path}, which it does not declare (it declares: {declared}); "
            "add it to STAGE_SECTIONS in t2iops/config/stages.py and to the stage's params in dvc.yaml, "
            "or take the value from the stage's input artifact"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(f"stage {self._stage!r}: the configuration is read-only here (set {self._prefix}{name} with -S)")

    def __repr__(self) -> str:
        return f"StageConfig({self._stage!r}, {self.to_dict()!r})"

    # -- the same serialisation as Config, of the declared part only ---------------------
    def to_dict(self) -> dict[str, Any]:
        data = self._cfg.model_dump(mode="json")
        return restrict_dict(data, self._allowed, self._prefix)


def stage_values(cfg: Config, stage: str) -> dict[str, Any]:
    """The resolved values ``stage`` reads (declared paths + runtime sections), as a nested dict."""
    return StageConfig(cfg, stage).to_dict()


def dvc_params(stage: str) -> list[str]:
    """What ``dvc.yaml`` lists under the stage's ``params:``: its declared paths. The runtime
    sections are left out: an S3 endpoint or retry count does not change a result."""
    return list(stage_paths(stage))
