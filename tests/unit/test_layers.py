"""The import layers of t2iops hold, and nothing imports in a circle.

The layers are the contracts under ``[tool.importlinter]`` in pyproject.toml, checked by
import-linter's own ``lint-imports`` (the same command a reader runs by hand). The cycles are
counted a second way by ``scripts/code_metrics.py`` (an ``ast`` walk, lazy imports included).
Each check is also run on a throwaway package with an upward import and a cycle, so a check that
silently passes everything would fail here.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on one configuration file, from ``cwd`` (where the root package is found)."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (import-linter)")
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def broken_contracts(done: subprocess.CompletedProcess) -> list[str]:
    """The names of the contracts lint-imports reports broken."""
    lines = [line.rstrip() for line in done.stdout.splitlines()]
    return [line[: -len(" BROKEN")].strip() for line in lines if line.endswith(" BROKEN")]


@pytest.fixture(scope="module")
def code_metrics():
    """scripts/code_metrics.py, imported by its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "scripts" / "code_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_contracts_are_kept():
    done = lint_imports(ROOT / "pyproject.toml", ROOT)
    assert done.returncode == 0, (f"broken import contracts: {broken_contracts(done) or '(see below)'}\n"
                                  f"{done.stdout}{done.stderr}")


def test_no_import_cycles(code_metrics):
    found = code_metrics.measure()
    assert found["module_cycles"] == [], f"modules that import each other round a circle: {found['module_cycles']}"
    assert found["subpackage_cycles"] == [], \
        f"subpackages that import each other round a circle: {found['subpackage_cycles']}"


# ---------------------------------------------------------------------------------------
# The same checks catch a package that breaks them
TOY_CONFIG = """\
[tool.importlinter]
root_package = "toy"

[[tool.importlinter.contracts]]
name = "toy layers"
type = "layers"
containers = ["toy"]
layers = ["top", "bottom", "a | b"]
exhaustive = true

[[tool.importlinter.contracts]]
name = "toy acyclic"
type = "acyclic_siblings"
ancestors = ["toy"]
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def toy(tmp_path):
    """``toy``: top imports bottom, bottom imports a and b, nothing else. Sound."""
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/top.py": "from toy import bottom\n",
        "toy/bottom.py": "from toy.a import one\nfrom toy.b import two\n",
        "toy/a/__init__.py": "",
        "toy/a/one.py": "",
        "toy/b/__init__.py": "",
        "toy/b/two.py": "",
        "toy.toml": TOY_CONFIG,
    })
    return tmp_path


def _measure(code_metrics, monkeypatch, root: Path) -> dict:
    for name, value in (("ROOT", root), ("SRC", root), ("PACKAGE", "toy")):
        monkeypatch.setattr(code_metrics, name, value)
    return code_metrics.measure()


def test_the_checks_pass_a_sound_package(toy, code_metrics, monkeypatch):
    done = lint_imports(toy / "toy.toml", toy)
    assert done.returncode == 0, done.stdout + done.stderr
    found = _measure(code_metrics, monkeypatch, toy)
    assert found["module_cycles"] == [] and found["subpackage_cycles"] == []


def test_the_checks_catch_an_upward_import_and_a_cycle(toy, code_metrics, monkeypatch):
    _write(toy, {
        # upward, and lazy: an import inside a function is still a dependency
        "toy/bottom.py": "from toy.a import one\nfrom toy.b import two\n\n\ndef f():\n    from toy import top\n",
        # two siblings of one layer that import each other
        "toy/a/one.py": "from toy.b import two\n",
        "toy/b/two.py": "from toy.a import one\n",
    })
    done = lint_imports(toy / "toy.toml", toy)
    assert done.returncode != 0 and set(broken_contracts(done)) == {"toy layers", "toy acyclic"}, done.stdout
    assert "toy.bottom -> toy.top" in done.stdout, done.stdout
    found = _measure(code_metrics, monkeypatch, toy)
    assert found["module_cycles"] == [["toy.a.one", "toy.b.two"], ["toy.bottom", "toy.top"]]
    assert found["subpackage_cycles"] == [["toy.a", "toy.b"], ["toy.bottom", "toy.top"]]


# ---------------------------------------------------------------------------------------
# One digest helper
def modules_importing(root: Path, name: str, allowed: set[str]) -> list[str]:
    """Files under ``root`` (other than ``allowed``, relative paths) that import module ``name``."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == name or n.startswith(name + ".") for n in names):
                found.append(f"{rel}:{node.lineno}")
    return found


def test_every_hash_goes_through_the_one_digest_helper(tmp_path):
    assert modules_importing(ROOT / "src" / "t2iops", "hashlib", {"hashing.py"}) == [], \
        "use t2iops.hashing (digest, bytes_digest, file_digest, hasher, raw_digest) instead of hashlib"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "hashing.py").write_text("import hashlib\n")
    (tmp_path / "pkg" / "other.py").write_text("def f():\n    from hashlib import sha256\n    return sha256\n")
    assert modules_importing(tmp_path / "pkg", "hashlib", {"hashing.py"}) == ["other.py:2"]
