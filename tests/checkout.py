"""The repository's tracked files, for tests that need a copy of the project as a clone has it
(the docs test runs the docs' commands in one; the image test builds from one)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_tracked(target: Path, root: Path = ROOT) -> Path:
    """Copy every file ``git ls-files`` lists under ``root`` to ``target`` (modes kept); ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        source = root / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target
