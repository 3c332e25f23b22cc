"""Retired versions: kept (the history and lineage still name them), never champion again.

``<registry>/<model>/retired/<version>.json`` records who retired a version, when and why. It is
created once and never rewritten or removed, so retiring cannot be undone by a later write:
promote refuses a retired version and rollback passes over it. Whatever that file holds, its
presence retires the version (a damaged record fails safe).
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

from .versions import RegistryError, check_name, model_root

FOLDER = "retired"


def _name(version: str) -> str:
    return f"{FOLDER}/{check_name(version, 'version')}.json"


def retirement(store, version: str) -> Optional[dict[str, Any]]:
    """The retirement record of ``version`` (None when it is not retired)."""
    found = store.read(_name(version))
    if found is None:
        return None
    try:
        record = json.loads(found[0])
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"version": version, "note": f"{_name(version)} is damaged; the version stays retired"}
    return {**record, "version": version}


def retired_versions(store) -> set[str]:
    return {name[:-5] for name in store.names(FOLDER) if name.endswith(".json")}


def describe(record: dict[str, Any]) -> str:
    who = " ".join(f"{k} {record[k]}" for k in ("time", "actor") if record.get(k))
    why = f": {record['reason']}" if record.get("reason") else ""
    return f"version {record['version']!r} is retired ({who or record.get('note', '')}){why}"


def refuse_if_retired(store, version: str, doing: str) -> None:
    record = retirement(store, version)
    if record is not None:
        raise RegistryError(f"{describe(record)}: it can never be champion again; {doing}")


def retire(store, registry_uri: str, model_name: str, version: str, champion: Optional[str], reason: str,
           actor: str) -> tuple[dict[str, Any], bool]:
    """Retire ``version``; returns (its retirement record, whether this call created it)."""
    existing = retirement(store, version)
    if existing is not None:
        return existing, False
    if version == champion:
        raise RegistryError(f"version {version!r} is the champion of {model_root(registry_uri, model_name)}: "
                            "promote another version or roll back first, then retire it")
    record = {"version": version, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "actor": actor, "reason": reason}
    if store.create(_name(version), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()):
        return record, True
    return retirement(store, version) or record, False  # retired by someone else meanwhile
