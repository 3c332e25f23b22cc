"""Size and shape of the code under src/: modules over 400 lines, functions over 80, the longest
argument lists and the import cycles between modules and between subpackages.

    python scripts/code_metrics.py            # the table
    python scripts/code_metrics.py --json     # the same, machine-readable

Imports are read with ``ast`` (every ``import`` and ``from ... import``, at module level or inside
a function, relative ones resolved), so a lazy import inside a function counts: it is still a
dependency a reader has to follow. A cycle is a strongly connected group of two or more."""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "t2iops"
MODULE_LINES = 400
FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        found[module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return found


def imports_of(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` depends on the module; `from pkg import name` on pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; groups of two or more nodes, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def measure() -> dict:
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(name, path, tree, known) for name, (path, tree) in mods.items()}
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(subpackage(name), set()).update(
            subpackage(t) for t in targets if subpackage(t) != subpackage(name)
        )
    big_modules, long_functions, arguments = [], [], []
    total_lines = 0
    for name, (path, tree) in mods.items():
        lines = len(path.read_text().splitlines())
        total_lines += lines
        if lines > MODULE_LINES:
            big_modules.append((str(path.relative_to(ROOT)), lines))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                long_functions.append((where, length))
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg not in ("self", "cls")]
            arguments.append((where, len(names)))
    arguments.sort(key=lambda item: -item[1])
    return {
        "lines_under_src": total_lines,
        "modules": len(mods),
        "modules_over_400_lines": sorted(big_modules, key=lambda m: -m[1]),
        "functions_over_80_lines": sorted(long_functions, key=lambda f: -f[1]),
        "longest_argument_lists": arguments[:8],
        "module_cycles": strongly_connected(graph),
        "subpackage_cycles": strongly_connected(packages),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = measure()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['lines_under_src']} lines in {result['modules']} modules under src/{PACKAGE}")
    for title, key in (("modules over 400 lines", "modules_over_400_lines"),
                       ("functions over 80 lines", "functions_over_80_lines"),
                       ("longest argument lists", "longest_argument_lists")):
        print(f"\n{title}: {len(result[key]) if key != 'longest_argument_lists' else ''}")
        for where, count in result[key]:
            print(f"  {count:5d}  {where}")
    for title, key in (("module import cycles", "module_cycles"), ("subpackage import cycles", "subpackage_cycles")):
        print(f"\n{title}: {len(result[key])}")
        for group in result[key]:
            print("  " + " <-> ".join(group))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
