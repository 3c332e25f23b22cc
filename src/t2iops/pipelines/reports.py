"""Small Markdown summaries shown in the KFP UI beside the artifacts (Markdown artifacts)."""
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


def metrics_markdown(title: str, metrics: dict[str, Any]) -> str:
    """A two-column table of the scalar entries of ``metrics`` (nested keys dotted)."""
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((prefix, value))

    walk("", metrics)
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# {title}\n\n| key | value |\n| --- | --- |\n{body}\n"
