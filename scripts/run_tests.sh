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
# compiler time on two cores. Their build files name the environment's own paths, so torch's default
# folder (~/.cache/torch_extensions), shared by every environment, is rebuilt each time another
# environment uses it. One folder per environment (its path and its Python / torch / DeepSpeed
# versions) in the user's cache is built once, and survives a checkout recreated at the same path
# (a CI job's clone); a folder inside .venv would be deleted with it.
if [[ -z "${TORCH_EXTENSIONS_DIR:-}" ]]; then
  OPS_KEY="$(python -c 'import sys, importlib.metadata as m; import hashlib; print("py%d%d-torch%s-deepspeed%s-%s" % (*sys.version_info[:2], m.version("torch"), m.version("deepspeed"), hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]))')"
  if [[ -n "${XDG_CACHE_HOME:-}" || -n "${HOME:-}" ]]; then
    export TORCH_EXTENSIONS_DIR="${XDG_CACHE_HOME:-${HOME:-}/.cache}/t2iops/torch-extensions/$OPS_KEY"
  else  # no home to cache in: beside the environment
    export TORCH_EXTENSIONS_DIR="$ROOT/.venv/torch-extensions/$OPS_KEY"
  fi
fi
# The checkout's own bytecode, once: where PYTHONDONTWRITEBYTECODE is set nothing caches it, and
# every subprocess the tests start (kfp.local steps, torchrun ranks, CLI and dvc stages) would
# recompile the t2iops modules it imports (~0.4 s of CPU each). Skips what is up to date.
python -m compileall -q src components pipelines >/dev/null
# loadscope: each test module runs whole on one worker, so a module-scoped fixture (a trained toy
# model, a built wheel, a pipeline run in containers) is built once. (--dist loadgroup stopped
# grouping with pytest 9.2: it marks groups by rewriting node ids, which pytest no longer reads,
# pytest-dev/pytest-xdist#1386; every test then ran on its own and such fixtures were built on
# both workers.)
exec python -m pytest -n "${T2IOPS_TEST_WORKERS:-2}" --dist loadscope --durations=15 "$@"
