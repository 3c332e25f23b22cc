"""What a full configuration and a stage's view share: YAML, the ``config.resolved.yaml`` written
next to a stage's outputs, and a stable fingerprint for cache keys, all from ``to_dict()``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..hashing import bytes_digest


def _get_path(data: dict, dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        cur = cur[part]
    return cur


class _Serialised:
    """What a full configuration and a stage's view share: YAML, the file written next to a
    stage's outputs, and a stable hash for cache keys, all from ``to_dict()``."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, directory: str | Path, name: str = "config.resolved.yaml") -> Path:
        """Write the resolved config next to a stage's outputs."""
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the named sections (all when none), for cache keys."""
        data = self.to_dict()
        if sections:
            data = {s: _get_path(data, s) for s in sections}
        return bytes_digest(json.dumps(data, sort_keys=True).encode(), 16)
