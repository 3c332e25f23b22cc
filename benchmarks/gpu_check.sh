#!/usr/bin/env bash
# GPU check of the adapter training step at SDXL size (benchmarks/gpu_train_bench.py), as one
# command for a lent GPU machine with PyTorch but without diffusers/DeepSpeed installed.
#
#   bash benchmarks/gpu_check.sh            # results: $OUT/gpu_results.json, $OUT/gpu_train_bench.log
#   BATCH=2 STEPS=4 EXTRA=--no-checkpointing bash benchmarks/gpu_check.sh
#
# Pure-Python wheels the machine lacks (diffusers, deepspeed, pydantic, hjson, ...) travel in
# .whl/ at the repository root (git-ignored; carry it). They are unpacked into a private folder,
# never into the machine's own environment. Total time budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
SITE=/tmp/t2iops-site
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "[gpu_check] could not unpack .whl/ (continuing with what is installed)"
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  python3 -c "import diffusers, transformers; print('diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
} | tee "$OUT/gpu_env.txt"
timeout 450 python3 benchmarks/gpu_train_bench.py --batch "${BATCH:-4}" --steps "${STEPS:-6}" --out "$OUT" ${EXTRA:-} 2>&1 \
  | grep -vE "FutureWarning|UserWarning|warnings.warn|^\s*$" | tee "$OUT/gpu_train_bench.log"
status=${PIPESTATUS[0]}
[[ $status -eq 124 ]] && echo "[gpu_check] timed out after 450 s" | tee -a "$OUT/gpu_train_bench.log"
exit "$status"
