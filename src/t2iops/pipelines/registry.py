"""Publish an exported adapter to the model registry prefix (S3 or a folder).

Layout: ``<registry>/<model_name>/<version>/`` holds the export (ONNX graphs, ``export.json``,
README), ``metrics.json`` from the evaluation and ``lineage.json`` (pipeline run, code commit,
data source, config). It is written with :func:`t2iops.storage.publish`: the ``_manifest.json`` goes last,
so a reader never sees half a model. ``<registry>/<model_name>/latest.json`` is updated only
after the version is complete. An existing version is never overwritten. Publishing does not
make a version the champion: :mod:`t2iops.registry` decides that (``t2iops registry compare``,
``promote``, ``t2iops retrain``).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from .. import storage
from ..config import Config
from ..errors import UsageError
from ..registry.versions import check_name as _check_registry_name

log = logging.getLogger(__name__)


def check_name(value: str, what: str) -> str:
    """A model name or version as a pipeline parameter (the registry's rule: no key can leave its prefix)."""
    return _check_registry_name(value, f"pipeline parameter '{what}'")


def publish_model(
    export_dir: str,
    registry_uri: str,
    model_name: str,
    version: str,
    cfg: Config,
    metrics_path: Optional[str] = None,
    lineage: Optional[dict[str, Any]] = None,
) -> str:
    """Copy ``export_dir`` (+ metrics, lineage) to ``<registry>/<model_name>/<version>``; returns that URI."""
    check_name(model_name, "model_name")
    check_name(version, "model_version")
    if not registry_uri:
        raise UsageError("pipeline parameter 'registry_uri' is empty")
    export_path = storage.materialize(export_dir, cfg)
    if not (export_path / "export.json").exists():
        raise UsageError(f"{export_dir} is not an export (no export.json)")
    dest = storage.join(registry_uri, model_name, version)
    if storage.is_published(dest, cfg):
        raise UsageError(f"{dest} already holds a published model: choose another model_version")
    record = {
        "model_name": model_name,
        "version": version,
        "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(lineage or {}),
    }
    with storage.publish(dest, cfg, extra={"stage": "publish", "model_name": model_name, "version": version}) as staging:
        for path in sorted(export_path.rglob("*")):
            rel = path.relative_to(export_path)
            if path.is_file() and rel.name not in (storage.MANIFEST,):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
        if metrics_path:
            shutil.copy2(metrics_file(metrics_path), staging / "metrics.json")
        (staging / "lineage.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        cfg.write(staging)
    pointer = {"version": version, "uri": dest, "published": record["published"]}
    storage.write_bytes(storage.join(registry_uri, model_name, "latest.json"), json.dumps(pointer, indent=2).encode(), cfg)
    log.info("published %s %s -> %s", model_name, version, dest)
    return dest


def metrics_file(path: str) -> Path:
    """``metrics.json`` inside an evaluation folder, or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    if not p.is_file():
        raise UsageError(f"no evaluation metrics at {path}")
    return p
