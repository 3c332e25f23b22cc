"""The one digest helper: a short, stable hash of any JSON-able value (keys sorted)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj`` as sorted JSON (``str`` for
    anything JSON cannot hold)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
