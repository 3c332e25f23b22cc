#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) from requirements/lock.txt.
# Idempotent: a second run with an unchanged lock and pyproject returns in about a second.
# torch goes in first through pip (so pip's configured wheel locations and caps apply), the
# rest through uv from the fully pinned lock; DeepSpeed is source-only and builds against the
# installed torch (--no-build-isolation, DS_BUILD_OPS=0: JIT ops only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${T2IOPS_VENV:-$ROOT/.venv}"
LOCK="$ROOT/requirements/lock.txt"
PY="${PYTHON:-python3}"

stamp_of() { cat "$LOCK" pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1; }
STAMP="$(stamp_of)"
if [[ -f "$VENV/.t2iops-stamp" && "$(cat "$VENV/.t2iops-stamp")" == "$STAMP" ]]; then
  exit 0
fi

echo "[bootstrap] setting up $VENV (first run takes a few minutes)" >&2
start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$(grep -E '^uv==' "$LOCK")"
# torch + torchvision (+ their CUDA runtime wheels on x86_64), pinned by the lock.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$LOCK" \
  "$(grep -E '^torch==' "$LOCK")" "$(grep -E '^torchvision==' "$LOCK")"
grep -vE '^(deepspeed|torch|torchvision)==' "$LOCK" > "$VENV/.lock-no-ds.txt"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r "$VENV/.lock-no-ds.txt"
DS_BUILD_OPS=0 "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-build-isolation \
  "$(grep -E '^deepspeed==' "$LOCK")"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
# Bytecode for the whole venv, written once here. uv writes none by default, and where
# PYTHONDONTWRITEBYTECODE is set (containers, CI images) Python caches none either, so every
# process (each kfp.local step, torchrun rank, dvc command) recompiled kubernetes, diffusers,
# transformers, deepspeed... from source: about 5 s of CPU per process. compileall skips what
# is already up to date; a file that does not compile (a template, a py2 test) is no error here.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
  >/dev/null 2>&1 || true
echo "$STAMP" > "$VENV/.t2iops-stamp"
echo "[bootstrap] ready in $(( $(date +%s) - start )) s" >&2
