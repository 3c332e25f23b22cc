"""Rewrite params.yaml and every preset as complete resolved configurations (every key).

DVC tracks parameters by key, so params.yaml and each preset (a complete params file usable with
`dvc repro --params` / `dvc exp run`) must hold every key a stage names. Run this after adding a
key to t2iops.config: tests fail while a params file lags behind the schema. Current values are
kept, and so are each file's leading comment block and the inline `# ...` comments on its keys. A new
key is written with the schema's default, which is a real SDXL value: check that it suits each
preset (the toy preset runs on a CPU) and that params.yaml still equals presets/toy.yaml.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from t2iops.config import load_config

ROOT = Path(__file__).resolve().parents[1]
KEY_LINE = re.compile(r"^( *)([A-Za-z_0-9]+):(.*?)(\s+#.*)?$")


def header_of(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            out.append(line)
        else:
            break
    return out


def inline_comments(text: str) -> dict[str, str]:
    """Dotted key -> its trailing comment."""
    notes, stack = {}, []
    for line in text.splitlines():
        m = KEY_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        stack = stack[: len(m.group(1)) // 2] + [m.group(2)]
        if m.group(4):
            notes[".".join(stack)] = m.group(4).strip()
    return notes


def refresh(path: Path) -> None:
    text = path.read_text()
    notes = inline_comments(text)
    cfg = load_config(path)
    body, stack = [], []
    for line in yaml.safe_dump(cfg.to_dict(), sort_keys=False, width=120).splitlines():
        m = KEY_LINE.match(line)
        if m:
            stack = stack[: len(m.group(1)) // 2] + [m.group(2)]
            note = notes.get(".".join(stack))
            if note:
                line = f"{line:<40} {note}"
        body.append(line)
    path.write_text("\n".join(header_of(text) + body) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    for target in [ROOT / "params.yaml", *sorted((ROOT / "src/t2iops/presets").glob("*.yaml"))]:
        refresh(target)
