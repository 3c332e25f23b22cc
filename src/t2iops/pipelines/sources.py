"""Where the pipeline's dataset comes from: DVC at a git revision, a path/URI, or synthesis.

``dvc``: the DVC-tracked folder ``dvc_path`` of the git repository ``dvc_repo`` at revision
``dvc_rev`` is read through :class:`dvc.api.DVCFileSystem` from the repository's DVC remote (S3).
Credentials come from the environment (in a cluster: a Kubernetes secret mapped to
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or IRSA), never from parameters; the S3
endpoint, when the remote is not AWS, comes from ``storage.endpoint_url``. The output is
published atomically with a manifest recording repository (credentials removed from its URL),
revision and resolved commit. A copied folder may hold symlinks only to files inside itself:
a link that leads outside is refused before anything is copied.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any, Optional

from .. import storage
from ..config import Config
from ..errors import DataError, UsageError
from ..redact import redact_text, redact_url

log = logging.getLogger(__name__)

SYNTH = "synth"
DVC = "dvc"


def pull_dataset(
    source: str,
    out: str,
    cfg: Config,
    dvc_repo: str = "",
    dvc_rev: str = "",
    dvc_path: str = "",
    dvc_remote: str = "",
) -> dict[str, Any]:
    """Bring the dataset named by ``source`` to ``out``; returns what was pulled (for lineage)."""
    source = (source or "").strip()
    if not source:
        raise UsageError("pipeline parameter 'data_source' is empty: use 'dvc', 'synth' or a folder / s3:// URI")
    if source == SYNTH:
        from ..data.synth import synthesize

        summary = synthesize(out, cfg)
        return {"source": SYNTH, "count": summary["count"], "seed": summary["seed"], "resolution": summary["resolution"]}
    if source == DVC:
        return fetch_dvc(dvc_repo, dvc_path, dvc_rev, out, cfg, remote=dvc_remote or None)
    return copy_dataset(source, out, cfg)


def copy_dataset(uri: str, out: str, cfg: Config) -> dict[str, Any]:
    """A folder or s3:// prefix, copied as it is (validation comes next)."""
    try:
        local = storage.materialize(uri, cfg, kind="datasets")
    except FileNotFoundError:
        raise DataError(f"pipeline parameter 'data_source': nothing found at {uri}") from None
    if not local.is_dir():
        raise DataError(f"pipeline parameter 'data_source': {uri} is not a folder / prefix")
    try:
        storage.check_links_inside(local, f"pipeline parameter 'data_source' {uri}")
    except storage.UnsafePath as exc:
        raise DataError(str(exc)) from None
    with storage.publish(out, cfg, extra={"stage": "pull", "source": uri}) as staging:
        for path in sorted(local.rglob("*")):
            rel = path.relative_to(local)
            if path.is_file() and rel.name not in (storage.MANIFEST, ".complete"):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
    return {"source": uri}


def dvc_remote_config(cfg: Config) -> Optional[dict[str, Any]]:
    """Overrides for the repository's DVC remote: the S3 endpoint of ``storage.endpoint_url`` and
    the same connect/read timeouts as our own S3 calls (only with an endpoint: they are S3-remote
    options that other remote types refuse)."""
    if cfg.storage.endpoint_url:
        return {"endpointurl": cfg.storage.endpoint_url,
                "connect_timeout": math.ceil(cfg.storage.connect_timeout),
                "read_timeout": math.ceil(cfg.storage.read_timeout)}
    return None


def fetch_dvc(repo: str, path: str, rev: str, out: str, cfg: Config, remote: Optional[str] = None) -> dict[str, Any]:
    """Download the DVC-tracked ``path`` of ``repo`` at ``rev`` into ``out``."""
    from dvc.api import DVCFileSystem

    for name, value in (("dvc_repo", repo), ("dvc_path", path), ("dvc_rev", rev)):
        if not value:
            raise UsageError(f"pipeline parameter '{name}' is required when data_source is 'dvc'")
    shown = redact_url(repo)  # what errors, logs and lineage record: never the token in the URL
    rel = path.strip("/")
    try:
        fs = DVCFileSystem(repo, rev=rev, remote=remote, remote_config=dvc_remote_config(cfg))
        is_dir = fs.isdir(rel)  # the revision is resolved here: an unknown one raises
    except Exception as exc:  # scm, clone and revision errors come in many types
        raise DataError(f"cannot open DVC repository {shown} at revision {rev!r}: {redact_text(str(exc))}") from None
    if not is_dir:
        raise DataError(f"{shown}@{rev}: {path} does not exist or is not a DVC-tracked folder")
    files = list(fs.find(rel, detail=False))
    if not files:
        raise DataError(f"{shown}@{rev}: {path} is empty")
    commit = _resolved_commit(fs)
    lineage = {"source": DVC, "repo": shown, "rev": rev, "commit": commit, "path": rel, "file_count": len(files)}
    with storage.publish(out, cfg, extra={"stage": "pull", **lineage}) as staging:
        targets = [_dvc_target(staging, rel, remote_file, shown) for remote_file in files]
        for remote_file, target in zip(files, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(remote_file, str(target))
            except Exception as exc:
                raise DataError(f"{shown}@{rev}: cannot download {remote_file} from the DVC remote: "
                                f"{redact_text(str(exc))}") from None
    log.info("pulled %d files of %s@%s:%s (commit %s) -> %s", len(files), shown, rev, rel, commit, out)
    return lineage


def _dvc_target(staging: Path, rel: str, remote_file: str, shown: str) -> Path:
    """Where ``remote_file`` goes in ``staging``; refused when it would land outside."""
    try:
        inner = Path(remote_file).relative_to(rel).as_posix()
        return storage.safe_target(staging, inner, f"{shown}: {remote_file}")
    except (ValueError, storage.UnsafePath) as exc:
        raise DataError(str(exc)) from None


def _resolved_commit(fs) -> Optional[str]:
    """The git commit the revision resolved to (the repository's git filesystem knows it)."""
    repo = getattr(fs, "repo", None)
    rev = getattr(getattr(repo, "fs", None), "rev", None)
    if isinstance(rev, str) and len(rev) == 40:
        return rev
    try:
        return repo.get_rev()
    except Exception:  # a repository opened without git (e.g. --no-scm) has no commit
        return None
