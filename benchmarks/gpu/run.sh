#!/usr/bin/env bash
# The GPU check, as one script for a lent GPU machine with PyTorch but without diffusers or
# DeepSpeed installed: pure-Python wheels travel in .whl/ (see benchmarks/gpu/README.md).
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
timeout 300 python3 benchmarks/gpu/train_step.py --batch "${BATCH:-4}" --steps "${STEPS:-8}" --out "$OUT" 2>&1 \
  | grep -vE "^\s*warnings.warn|FutureWarning|UserWarning" | tee "$OUT/train_step.log"
