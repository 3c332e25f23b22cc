"""The dataset validation's Markdown summary, shown in the KFP UI beside the artifacts (a Markdown
artifact)."""
from __future__ import annotations

from typing import Any


def validation_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Dataset validation: {report['status']}",
        "",
        f"- rows: {report['rows']} (good {report['good']}, bad {report['bad']}, "
        f"bad share {report['bad_fraction']:.2%} of at most {report['max_bad_fraction']:.2%})",
        f"- splits: {', '.join(f'{k}={v}' for k, v in report.get('splits', {}).items()) or 'none'}",
    ]
    if report.get("errors"):
        lines.append(f"- errors: {', '.join(f'{k}={v}' for k, v in report['errors'].items())}")
    for row in report.get("bad_rows", [])[:20]:
        lines.append(f"  - `{row.get('where')}`: {row.get('message')}")
    return "\n".join(lines) + "\n"
