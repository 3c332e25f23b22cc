"""The commands in README.md and docs/*.md are the product's: a renamed command, flag, key or file
fails here, and the blocks a new user can run on this machine are run.

Shell blocks are fenced code blocks whose info string is ``bash``, ``sh``, ``shell`` or
``console`` (in a ``console`` block only the lines starting with ``$ `` are commands; the rest is
output). A block runs unless the nearest non-blank line above its opening fence is the tag

    <!-- docs-test: check-only (REASON) -->

where REASON, required, says why it cannot run in a test: it needs a cluster, a GPU, the
internet, an S3 store, a docker daemon, or a process that runs until stopped, or takes minutes;
or the tag is

    <!-- docs-test: after (tiny-project) -->

for a block that needs what the workflow's earlier stages leave behind: it runs (as an untagged
block does) in a second project copy, prepared once in this process by the stages' own functions
(``_build_tiny_state``): params.yaml at ``t2iops.pipelines.local.SMOKE_OVERRIDES`` sizes on a tiny
random SDXL in ``models/tiny-sdxl`` (one conditioning scale, no FID, no gate, no pipeline check in
export), ``data/circles``, ``runs/validated`` (also ``runs/V``), ``runs/cache``, ``runs/train``
(also ``runs/O``), ``runs/evaluate``, ``runs/export``, and a folder registry ``runs/registry``
with ``v1`` (the champion) and ``v2`` (better by its metrics) published from that export. These
blocks run in the docs' order and share that copy: a block may use what an earlier one changed.
Any other ``docs-test`` comment, or a check-only tag with no reason, fails the test.

Every block, run or not, is checked (a line continued with ``\\`` is one command; ``#`` starts a
comment; ``NAME=value`` lines set ``$NAME`` for the lines after them; ``[...]`` marks optional
words and ``a | b`` alternatives, as in the docs' synopses):

- ``t2iops ...`` (also ``python -m t2iops.cli ...`` and ``torchrun ... -m t2iops.cli ...``): the
  command path exists in the real parser (``t2iops.cli.build_parser``), every option exists on that
  command, every ``-S key=value`` resolves against the configuration schema, and ``--params FILE``
  names an existing file;
- ``dvc ...``: dvc's own parser accepts it; ``dvc repro`` / ``dvc exp run`` targets are stages in
  ``dvc.yaml``, and their ``-S`` keys resolve against the schema;
- any word naming a path under the repository's folders (``scripts/``, ``benchmarks/``, ``src/``,
  ``docs/``, ``infra/``, ...), or a ``.yaml``/``.md``/``.sh``/``.py`` file at its root, exists
  (``bash FILE``, ``kubectl apply -k DIR``, ``cp FILE``...).

Outside shell blocks: every inline code span that names such a path exists, every inline
``t2iops ...`` span passes the checks above, and every relative markdown link leads to a file.

A block that runs runs as one ``bash -euo pipefail`` script in a copy of the project's tracked
files whose ``.venv`` leads to this environment, after ``source .venv/bin/activate`` (what the
README tells a new shell to do), with only the system folders on PATH and 60 s at most.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from t2iops.cli import build_parser
from t2iops.config import ConfigError, load_config
from t2iops.pipelines.local import SMOKE_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
TAG = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
CHECK_ONLY = re.compile(r"check-only \((\S.*)\)")
AFTER = "after (tiny-project)"
# Words naming something in the repository: its top-level folders, or a file at its root.
REPO_DIRS = ("scripts", "benchmarks", "src", "docs", "infra", "pipelines", "components", "requirements", "tests",
             ".github", ".ci")
IN_FOLDER = rf"({'|'.join(map(re.escape, REPO_DIRS))})/[\w./*-]*"
REPO_PATH = re.compile(rf"^(\./)?({IN_FOLDER}|[\w-]+\.(yaml|yml|md|sh|py|toml))$")  # in shell blocks
REPO_FOLDER_PATH = re.compile(rf"^(\./)?{IN_FOLDER}$")  # in prose, where `report.md` is an output's file
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())
RUN_TIMEOUT_S = 60


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    tag: str | None  # the docs-test comment's content, None when untagged

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.tag is None

    @property
    def after(self) -> bool:
        return self.tag == AFTER

    def commands(self) -> list[str]:
        """The block's commands: continuations joined, console output dropped."""
        lines = self.text.splitlines()
        if self.lang == "console":
            lines = [ln.strip()[2:] for ln in lines if ln.strip().startswith("$ ")]
        joined, out = "", []
        for ln in lines:
            if ln.rstrip().endswith("\\"):
                joined += ln.rstrip()[:-1] + " "
                continue
            out.append((joined + ln).strip())
            joined = ""
        return [c for c in out if c and not c.startswith("#")]


def _blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,})\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(2))
        if fence.group(3) in SHELLS:
            above = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            tag = TAG.fullmatch(above)
            body = "\n".join(ln[len(fence.group(1)):] if ln.startswith(fence.group(1)) else ln
                             for ln in lines[i + 1:end])
            blocks.append(Block(doc, i + 1, fence.group(3), body, tag.group(1) if tag else None))
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS for b in _blocks(doc)]
PARSER = build_parser()


def _words(command: str, variables: dict[str, str]) -> list[str]:
    """A command line's words, variables substituted, synopsis brackets and bars removed."""
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), command)
    words = [_unbracket(w) for w in shlex.split(command, comments=True)]
    return [w for w in words if w not in ("", "|", "...")]


def _unbracket(word: str) -> str:
    """``[--gate]`` -> ``--gate``; a value such as ``[0,1]`` or ``k=[768,1024]`` stays."""
    if word.startswith("[") and not re.fullmatch(r"\[[\d.,\s]*\]", word):
        word = word[1:]
    if word.endswith("]") and word.count("]") > word.count("["):
        word = word[:-1]
    return word


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _check_override(item: str, where: str) -> list[str]:
    try:
        load_config(None, [item])
    except ConfigError as exc:
        return [f"{where}: -S {item}: {exc}"]
    return []


def _check_t2iops(args: list[str], where: str, inline: bool = False) -> list[str]:
    """Problems of one ``t2iops ARGS`` line, checked against the real parser."""
    parser, path, i = PARSER, ["t2iops"], 0
    while i < len(args) and args[i] in _subparsers(parser):
        parser = _subparsers(parser)[args[i]]
        path.append(args[i])
        i += 1
    if inline and i == len(args):  # prose may name a group: `t2iops registry`
        return []
    if _subparsers(parser) and parser.get_default("func") is None and args[i:i + 1] not in (["--help"], ["-h"], ["--version"]):
        return [f"{where}: `{' '.join(path)}` needs one of {sorted(_subparsers(parser))}, got {args[i:i + 1]}"]
    problems, options = [], parser._option_string_actions
    rest = args[i:]
    for k, word in enumerate(rest):
        if not word.startswith("-") or re.fullmatch(r"-\d.*", word):
            continue
        flag, _, inline = word.partition("=")
        if flag not in options:
            problems.append(f"{where}: `{' '.join(path)}` has no option {flag}")
            continue
        value = inline or (rest[k + 1] if k + 1 < len(rest) else "")
        if options[flag].dest == "overrides":
            problems += _check_override(value, where)
    return problems


def _check_dvc(args: list[str], where: str, inline: bool = False) -> list[str]:
    from dvc.cli.parser import get_main_parser

    from dvc.cli import DvcParserError

    try:
        parsed = get_main_parser().parse_args(args)
    except (DvcParserError, SystemExit):  # prose may name a part of one: `dvc exp run -S`
        return [] if inline else [f"{where}: dvc does not accept `dvc {' '.join(args)}`"]
    problems = [item for s in getattr(parsed, "set_param", None) or [] for item in _check_override(s, where)]
    if args[:1] == ["repro"] or args[:2] == ["exp", "run"]:
        stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
        problems += [f"{where}: dvc.yaml has no stage {t!r}" for t in parsed.targets if t not in stages]
    return problems


def _written_by_the_docs() -> set[str]:
    """Files the docs' own commands write (``-o``, ``--out``, ``--output``): a later block may name them."""
    written = set()
    for block in BLOCKS:
        for command in block.commands():
            words = _words(command, {})
            written |= {words[k + 1] for k in range(len(words) - 1) if words[k] in ("-o", "--out", "--output")}
    return written


def _check_paths(words: list[str], where: str, pattern: re.Pattern = REPO_PATH) -> list[str]:
    problems = []
    for word in words:
        word = word.split("=", 1)[1] if re.match(r"^-?-?[\w.-]+=", word) else word
        if word in WRITTEN:
            continue
        if pattern.match(word) and not any(REPO.glob(word.removeprefix("./"))) and not (REPO / word).exists():
            problems.append(f"{where}: {word}: no such file or folder in the repository")
    return problems


WRITTEN = _written_by_the_docs()


def _t2iops_args(words: list[str]) -> list[str] | None:
    """The t2iops arguments of a command line, or None when it does not run t2iops."""
    if words[:1] == ["t2iops"] or (words and words[0].endswith("/bin/t2iops")):
        return words[1:]
    for k in range(len(words) - 1):
        if words[k] == "-m" and words[k + 1] == "t2iops.cli":
            return words[k + 2:]
    return None


def _check_command(command: str, variables: dict[str, str], where: str, inline: bool = False) -> list[str]:
    assignment = re.fullmatch(r"(\w+)=(\S+)", command)
    if assignment:
        variables[assignment.group(1)] = assignment.group(2)
        return _check_paths([assignment.group(2)], where)
    words = _words(command, variables)
    problems = _check_paths(words, where, REPO_FOLDER_PATH if inline else REPO_PATH)
    t2iops = _t2iops_args(words)
    if t2iops is not None:
        problems += _check_t2iops(t2iops, where, inline)
    elif words[:1] == ["dvc"] or (words and words[0].endswith("/bin/dvc")):
        problems += _check_dvc(words[1:], where, inline)
    elif words[:1] == ["docker"] and "t2iops" in words:  # `docker run IMAGE t2iops ...`
        problems += _check_t2iops(words[words.index("t2iops") + 1:], where)
    return problems


def test_every_shell_block_is_tagged_by_the_grammar():
    assert len(BLOCKS) >= 10, "the docs' shell blocks were not found"
    problems = []
    for block in BLOCKS:
        if block.tag is not None and block.tag != AFTER and not CHECK_ONLY.fullmatch(block.tag):
            problems.append(f"{block.where}: tag {block.tag!r}: write `<!-- docs-test: check-only (REASON) -->` "
                            f"or `<!-- docs-test: {AFTER} -->`")
    for doc in DOCS:  # a tag that is not right above a shell block is a typo, not a tag
        tagged = {b.line for b in BLOCKS if b.doc == doc and b.tag is not None}
        lines = doc.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if "docs-test" in line:
                following = next((m for m in range(n + 1, len(lines) + 1) if lines[m - 1].strip()), None)
                if following not in tagged:
                    problems.append(f"{doc.relative_to(REPO)}:{n}: a docs-test tag not right above a shell block")
    assert not problems, "\n".join(problems)


def test_every_command_in_a_shell_block_names_real_commands_options_keys_and_files():
    problems = []
    for block in BLOCKS:
        variables: dict[str, str] = {}
        for command in block.commands():
            problems += _check_command(command, variables, block.where)
    assert not problems, "\n".join(problems)


def _inline_spans(doc: Path):
    text = re.sub(r"^(\s*)(`{3,}).*?^\1\2\s*$", "", doc.read_text(), flags=re.S | re.M)  # without fenced blocks
    for n, line in enumerate(text.splitlines(), 1):
        for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
            yield n, span.strip()


def test_inline_commands_paths_and_links_exist():
    problems = []
    for doc in DOCS:
        name = doc.relative_to(REPO)
        for n, span in _inline_spans(doc):
            where = f"{name} (inline `{span}`)"
            if span.startswith(("t2iops ", "dvc ")) and "<" not in span and "..." not in span:
                problems += _check_command(span, {}, where, inline=True)
            else:  # `bash scripts/x.sh`, `--params src/...`: each word that names a repository path
                problems += _check_paths([w.strip("[](),;:'\"") for w in span.split()], where, REPO_FOLDER_PATH)
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"^[a-z]+:", target) and not (doc.parent / target).exists():
                problems.append(f"{name}: link ({target}) leads nowhere")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """The project's tracked files, with .venv leading to the environment running the tests."""
    from checkout import copy_tracked

    root = copy_tracked(tmp_path_factory.mktemp("docs") / "t2iops", REPO)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return root


# What the tiny project's copy holds: the sizes of ``t2iops pipeline run-local --smoke`` on a tiny
# random SDXL, one conditioning scale, no FID, no gate, no pipeline check in export.
TINY_SETTINGS = {**SMOKE_OVERRIDES, "model.base_model": "models/tiny-sdxl", "evaluate.conditioning_scales": [1.0],
                 "evaluate.gate.min_circle_iou": None, "export.pipeline_check": "skip"}


def _build_tiny_state(root: Path, tiny_sdxl_path: str) -> None:
    """In ``root`` (a project copy), what the ``after (tiny-project)`` blocks name, made in this
    process by the stages' own functions: data/circles, runs/validated (and runs/V), runs/cache,
    runs/train (and runs/O), runs/evaluate, runs/export, and a folder registry runs/registry with
    v1 (the champion) and v2 published from that export, v2 the better by its metrics."""
    from registry_records import registry_test_metrics

    from t2iops.cli import main
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.evaluate.stage import evaluate
    from t2iops.export.stage import export_adapter
    from t2iops.pipelines.registry import publish_model
    from t2iops.train import train

    shutil.copytree(tiny_sdxl_path, root / "models" / "tiny-sdxl")
    cfg = load_config(REPO / "params.yaml", TINY_SETTINGS)
    (root / "params.yaml").write_text(cfg.to_yaml())
    with contextlib.chdir(root):  # the relative paths the docs use, recorded as the CLI would
        synthesize("data/circles", cfg)
        validate("data/circles", "runs/validated", cfg)
        encode_dataset("data/circles", "runs/validated", "runs/cache", cfg)
        train("runs/cache", "runs/train", cfg)
        shutil.copytree("runs/validated", "runs/V")
        shutil.copytree("runs/train", "runs/O")
        shutil.rmtree("runs/train/checkpoints")  # so that the docs' `t2iops train --out runs/train` is a new run
        evaluate("runs/train", "data/circles", "runs/validated", "runs/evaluate", cfg)
        export_adapter("runs/train", "runs/export", cfg, metrics_uri="runs/evaluate/metrics.json")
        for version, iou in (("v1", 0.5), ("v2", 0.6)):
            metrics = root / f"metrics-{version}.json"
            metrics.write_text(json.dumps(registry_test_metrics(circle_iou=iou, edge_f1=iou - 0.2)))
            publish_model("runs/export", "runs/registry", "t2i-adapter", version, cfg, metrics_path=str(metrics),
                          lineage={"run_id": f"run-{version}"})
            metrics.unlink()
        assert main(["registry", "promote", "v1", "--registry", "runs/registry", "--reason", "first"]) == 0


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, tiny_sdxl_path):
    """A project copy (as ``project_copy``) whose params.yaml and runs/ are a tiny trained state."""
    from checkout import copy_tracked

    root = copy_tracked(tmp_path_factory.mktemp("docs-tiny") / "t2iops", REPO)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    _build_tiny_state(root, tiny_sdxl_path)
    return root


def _run_block(block: Block, cwd: Path) -> None:
    script = "source .venv/bin/activate\n" + "\n".join(block.commands()) + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update({"PATH": BARE_PATH, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"{block.where} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runs], ids=lambda b: b.where)
def test_runnable_block_runs_in_a_fresh_shell(block, project_copy):
    _run_block(block, project_copy)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.after], ids=lambda b: b.where)
def test_block_runs_after_the_tiny_project_is_built(block, tiny_project):
    _run_block(block, tiny_project)
