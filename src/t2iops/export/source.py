"""Find and load the adapter to export, plus what its training run recorded about itself.

``t2iops export --adapter A`` accepts either a diffusers adapter folder (``config.json`` +
weights) or a training output folder holding one under ``adapter/``, locally or on S3. The
training output's ``config.resolved.yaml`` and ``summary.json`` (when present) tell us the base
model, its revision and the data the adapter was trained on; the serving spec repeats them
so that a served adapter can be traced back to its run.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import storage
from ..errors import ModelError
from ..models.reference import BaseModelRef, reference_from_record

logger = logging.getLogger(__name__)

ADAPTER_TYPES = ("full_adapter", "light_adapter", "full_adapter_xl")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class AdapterSource:
    """A local copy of the adapter folder and the training run's records, when there are any."""

    uri: str
    adapter_dir: Path
    config: dict
    run_dir: Optional[Path] = None
    training_config: Optional[dict] = None
    training_summary: Optional[dict] = None
    notes: list[str] = field(default_factory=list)

    @property
    def adapter_type(self) -> str:
        return self.config.get("adapter_type", "full_adapter")

    @property
    def family(self) -> str:
        # full_adapter_xl is the only layout whose residuals fit an SDXL UNet.
        return "sdxl" if self.adapter_type == "full_adapter_xl" else "sd15"

    @property
    def weights_file(self) -> Path:
        for name in WEIGHT_FILES:
            if (self.adapter_dir / name).is_file():
                return self.adapter_dir / name
        raise ModelError(f"{self.adapter_dir}: no weights file ({' or '.join(WEIGHT_FILES)})")


def locate_adapter(adapter_uri: str, cfg: Any = None) -> AdapterSource:
    """Materialize ``adapter_uri`` and find the adapter folder in it (itself or ``adapter/``)."""
    try:
        root = storage.materialize(adapter_uri, cfg, kind="adapters")
    except FileNotFoundError:
        raise ModelError(f"adapter {adapter_uri} does not exist") from None
    if not root.is_dir():
        raise ModelError(f"adapter {adapter_uri} is not a folder (expected a diffusers adapter folder)")

    if (root / "config.json").is_file():
        adapter_dir, run_dir = root, None
    elif (root / "adapter" / "config.json").is_file():
        adapter_dir, run_dir = root / "adapter", root
    else:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise ModelError(
            f"adapter {adapter_uri}: neither config.json nor adapter/config.json found "
            f"(expected a diffusers T2IAdapter folder or a training output folder); it holds: {found}"
        )

    config = _read_adapter_config(adapter_dir / "config.json", adapter_uri)
    source = AdapterSource(uri=str(adapter_uri), adapter_dir=adapter_dir, config=config, run_dir=run_dir)
    source.weights_file  # fail early, with the folder named, when weights are missing
    if run_dir is not None:
        source.training_config = _read_optional(run_dir / "config.resolved.yaml", yaml.safe_load, source.notes)
        source.training_summary = _read_optional(run_dir / "summary.json", json.loads, source.notes)
    return source


def load_torch_adapter(source: AdapterSource):
    """The diffusers ``T2IAdapter`` in fp32, eval mode. Unreadable weights raise ModelError."""
    from diffusers import T2IAdapter

    try:
        adapter = T2IAdapter.from_pretrained(str(source.adapter_dir), torch_dtype=None)
    except Exception as exc:  # diffusers raises a variety of errors for damaged folders
        raise ModelError(
            f"adapter {source.uri}: cannot load weights from {source.weights_file.name}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return adapter.float().eval().requires_grad_(False)


def base_model_reference(source: AdapterSource, cfg: Any) -> tuple[BaseModelRef, str]:
    """The base model the adapter was trained on and where that was read: the training summary's
    reference (saved at encode, with the resolved commit), else the run's resolved config, else
    the ``model.*`` settings (a bare adapter folder records nothing). A ``model.*`` setting that
    disagrees with the run's record is a ModelError naming both."""
    record = (source.training_summary or {}).get("base_model")
    if isinstance(record, dict) and record.get("path"):
        where = f"training run {source.uri} (summary.json)"
        return reference_from_record(record, cfg.model, where), "training run summary.json"
    model = (source.training_config or {}).get("model") or {}
    if model.get("base_model"):
        record = {"path": model["base_model"], **{k: model.get(k) for k in ("revision", "variant", "vae", "dtype")}}
        where = f"training run {source.uri} (config.resolved.yaml)"
        return reference_from_record(record, cfg.model, where), "training run config.resolved.yaml"
    return BaseModelRef.from_config(cfg.model), "export configuration (model.*)"


def base_model_record(ref: BaseModelRef, where: str) -> dict:
    """The serving spec's ``base_model``: the reference, its path as ``id``, and its origin."""
    fields = ref.to_dict()
    return {"id": fields.pop("path"), **fields, "source": where}


# ---------------------------------------------------------------------------------------
def _read_adapter_config(path: Path, uri: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"adapter {uri}: {path.name} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"adapter {uri}: {path.name} must hold a JSON object")
    adapter_type = config.get("adapter_type", "full_adapter")
    if adapter_type not in ADAPTER_TYPES:
        raise ModelError(
            f"adapter {uri}: {path.name} key adapter_type={adapter_type!r}; expected one of {', '.join(ADAPTER_TYPES)}"
        )
    if config.get("_class_name") not in (None, "T2IAdapter"):
        raise ModelError(f"adapter {uri}: {path.name} describes a {config['_class_name']}, not a T2IAdapter")
    return config


def _read_optional(path: Path, parse, notes: list[str]) -> Optional[dict]:
    if not path.is_file():
        notes.append(f"training output has no {path.name}")
        return None
    try:
        data = parse(path.read_text())
    except Exception as exc:
        # The export can go on without it; the serving spec says why the fields it feeds are empty.
        notes.append(f"{path.name} is unreadable: {exc}")
        logger.warning("ignoring %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None
