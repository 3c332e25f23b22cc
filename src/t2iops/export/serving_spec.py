"""The serving spec of an export: ``export.json``, what a serving system reads.

It holds the graph's input contract, the aspect-ratio buckets the adapter was trained at
(``buckets``: a server should generate at one of these sizes, height x width), the residual
names and shapes per resolution and bucket (measured by running the graph), the recommended
conditioning scale, file hashes, the checks the export passed, and where the adapter came from (base model, training data version, git commit,
evaluation metrics), so a served adapter can be traced back to the run that made it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import storage
from ..hashing import file_digest

SCHEMA_VERSION = 1
SERVING_SPEC_FILE = "export.json"


def data_version(source, cfg: Any, cwd: Optional[Path] = None) -> dict:
    """What the adapter was trained on. ``dvc_md5``: the DVC hash of the training data root
    from ``dvc.lock`` in ``cwd``, or from ``<root>.dvc`` (null with ``dvc_reason`` otherwise). ``dataset_version``: the
    training summary's digest of the validated rows its cache was encoded from, when recorded."""
    training = source.training_config or {}
    root = ((training.get("data") or {}).get("root")) or cfg.data.root
    record: dict[str, Any] = {"path": root, "dvc_md5": None}
    lock = Path(cwd or Path.cwd()) / "dvc.lock"
    if lock.is_file():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
            record["dvc_reason"] = f"dvc.lock has no entry for the data root {root!r}"
        except yaml.YAMLError as exc:
            stages = {}
            record["dvc_reason"] = f"dvc.lock is not valid YAML ({exc})"
        wanted = _norm(root)
        for stage_name, stage in stages.items():
            for entry in (stage.get("outs") or []) + (stage.get("deps") or []):
                if _norm(entry.get("path", "")) == wanted and entry.get("md5"):
                    record.pop("dvc_reason", None)
                    record.update(dvc_md5=entry["md5"], dvc_stage=stage_name)
                    break
            if record["dvc_md5"]:
                break
    else:
        record["dvc_reason"] = f"no dvc.lock in {lock.parent}"
    pointer = lock.parent / f"{_norm(root)}.dvc"  # data tracked with `dvc add` instead of a stage
    if not record["dvc_md5"] and pointer.is_file():
        try:
            outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or []
        except yaml.YAMLError:
            outs = []
        if outs and outs[0].get("md5"):
            record.pop("dvc_reason", None)
            record.update(dvc_md5=outs[0]["md5"], dvc_file=pointer.name)
    summary = source.training_summary or {}
    if summary.get("data_version"):
        record["dataset_version"] = summary["data_version"]
        record["dataset_version_source"] = "training summary.json (digest of the validated rows the cache was encoded from)"
    else:
        record["dataset_version"] = None
        record["dataset_version_reason"] = (
            "the adapter folder is not a training output" if source.run_dir is None
            else "the training summary records no data_version"
        )
    return record


def pipeline_provenance(spec: dict, git_sha: str, pulled: dict) -> dict:
    """In a pipeline step there is no checkout: the code is the run's ``git_sha`` parameter and
    the data is what the pull step recorded (source; repository, revision and commit for DVC),
    not whatever the step's working directory happens to hold."""
    data = {k: v for k, v in spec["training_data"].items() if not k.startswith("dvc_")}
    data.update(dvc_md5=None, pulled=pulled)
    if pulled.get("source") != "dvc":
        data["dvc_reason"] = f"the pipeline pulled the data from {pulled.get('source') or 'an unrecorded source'}, not DVC"
    else:
        data["dvc_reason"] = "DVC-tracked: repository, revision and commit under `pulled`"
    git = ({"commit": git_sha, "source": "the pipeline run's git_sha parameter"} if git_sha
           else {"commit": None, "reason": "the pipeline run was given no git_sha"})
    return {**spec, "training_data": data, "git": git}


def git_commit(cwd: Optional[Path] = None) -> dict:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "reason": f"git is not available ({exc})"}
    if head.returncode != 0:
        return {"commit": None, "reason": "the working directory is not a git repository"}
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False,
    )
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def read_metrics(metrics_uri: Optional[str], cfg: Any) -> Optional[dict]:
    from ..errors import DataError

    if not metrics_uri:
        return None
    try:
        data = json.loads(storage.read_text(metrics_uri, cfg))
    except FileNotFoundError:
        raise DataError(f"metrics file {metrics_uri} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"metrics file {metrics_uri} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"metrics file {metrics_uri} must hold a JSON object")
    return data


def file_record(path: Path, root: Path) -> dict:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": file_digest(path)}


def _norm(path: str) -> str:
    path = str(path).strip()
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


# ---------------------------------------------------------------------------------------
def write_serving_spec(staging: Path, spec: dict) -> Path:
    path = staging / SERVING_SPEC_FILE
    path.write_text(json.dumps(spec, indent=2, sort_keys=False) + "\n")
    return path
