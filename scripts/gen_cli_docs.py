"""Write docs/cli.md: the --help of every `t2iops` command, in one page.

Run after changing a command's arguments or help text; a test fails while the page is stale."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from t2iops.cli import build_parser  # noqa: E402


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, path + (name,))


def render() -> str:
    os.environ["COLUMNS"] = "100"
    out = [
        "# Command reference",
        "",
        "Generated from each command's `--help` by `scripts/gen_cli_docs.py`. Exit codes for every",
        "command: 0 ok, 1 the stage failed, 2 usage or configuration error, 3 evaluation gate failed.",
        "",
    ]
    for path, parser in _walk(build_parser(), ("t2iops",)):
        parser.prog = " ".join(path)
        out += [f"## `{' '.join(path)}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    target = ROOT / "docs" / "cli.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text(render())
    print(f"wrote {target}")
