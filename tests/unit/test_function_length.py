"""No function in src/ runs over MAX_LINES lines unless it says why: its docstring, or a comment in
its first lines, gives the reason after the marker ``Long:`` (e.g. ``# Long: one table of checks``)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 80
MARKER = re.compile(r"\bLong:\s*\S")
TOP_LINES = 3  # how far below the signature a reason comment may sit


def long_functions(root: Path = SRC) -> list[str]:
    """``path:line name (N lines)`` for every function over MAX_LINES without a stated reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            if length <= MAX_LINES or _states_a_reason(node, lines):
                continue
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def _states_a_reason(node: ast.AST, lines: list[str]) -> bool:
    if MARKER.search(ast.get_docstring(node) or ""):
        return True
    body_start = node.body[0].lineno - 1
    top = lines[node.lineno - 1: body_start + TOP_LINES]
    return any(MARKER.search(line.split("#", 1)[1]) for line in top if "#" in line)


def test_no_function_in_src_is_long_without_a_stated_reason():
    assert long_functions() == [], f"split these into named steps, or state why with 'Long: <reason>' (>{MAX_LINES} lines)"


def test_the_check_sees_a_long_function_and_its_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def plain():\n{body}\n\n\ndef explained():\n    # Long: a table\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:1 plain ({MAX_LINES + 1} lines)"]
