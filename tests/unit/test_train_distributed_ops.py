"""DeepSpeed on CPUs trains without compiling its shared-memory all-reduce op (used only by
tensor-parallel inference): no C++ build, no compiler needed on the node, nothing written to the
extensions folder."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

SCRIPT = r"""
import json, os, sys
from t2iops.train.distributed import init_distributed, shutdown
from deepspeed.accelerator import get_accelerator
import deepspeed.comm.comm as ds_comm

builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
info = init_distributed(use_deepspeed=True)
backend = ds_comm.cdb
print(json.dumps({"world_size": info.world_size, "device": info.device.type,
                  "op_would_build": bool(builder and builder.is_compatible()),
                  "backend": type(backend).__name__, "shm_op": getattr(backend, "shm_comm_op", "missing") is not None,
                  "extensions": sorted(os.listdir(os.environ["TORCH_EXTENSIONS_DIR"]))
                  if os.path.isdir(os.environ["TORCH_EXTENSIONS_DIR"]) else []}))
shutdown()
"""


def test_deepspeed_on_cpu_skips_the_inference_allreduce_op(tmp_path):
    ext = tmp_path / "torch-extensions"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["device"], out["backend"]) == ("cpu", "TorchBackend")
    # DeepSpeed would have compiled it here (a compiler and the CPU accelerator are present)...
    assert out["op_would_build"] is True
    # ...and did not: no op loaded, nothing built.
    assert out["shm_op"] is False
    assert not (ext / "deepspeed_shm_comm").exists(), out["extensions"]
