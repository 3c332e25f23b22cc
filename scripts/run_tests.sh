#!/usr/bin/env bash
# Set up (or refresh) .venv, then run the test suite. Extra arguments go to pytest, e.g.
#   bash scripts/run_tests.sh -m "not slow"        # the quick subset
#   bash scripts/run_tests.sh tests/unit -k config  # a selection
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1
# Two workers for two cores; each test process keeps torch to one thread so they don't fight.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# DeepSpeed compiles its CPU ops (shared-memory allreduce, CPU Adam) on first use: 1.5 to 7 min of
# compiler time on two cores. By default they land in ~/.cache/torch_extensions, which CI starts
# empty (compiled again in every run) and which two environments on one machine keep rebuilding
# over each other; beside the venv they are built once per environment and cached with it.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch-extensions}"
# The checkout's own bytecode, once: where PYTHONDONTWRITEBYTECODE is set nothing caches it, and
# every subprocess the tests start (kfp.local steps, torchrun ranks, CLI and dvc stages) would
# recompile the t2iops modules it imports (~0.4 s of CPU each). Skips what is up to date.
python -m compileall -q src components pipelines >/dev/null
exec python -m pytest -n "${T2IOPS_TEST_WORKERS:-2}" --durations=15 "$@"
