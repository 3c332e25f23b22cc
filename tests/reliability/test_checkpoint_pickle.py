"""No code runs from a checkpoint. A marker pickle (its payload writes a marker file, then returns
the real state, so a run that unpickled it would go on as if nothing happened) is planted in each
file a resume reads, on every resume path: one process with torch AdamW, ZeRO-1 and ZeRO-2 in one
process, ZeRO-2 on two ranks. Each resume must refuse, name the file, and leave no marker.

Two guards are proven separately: the sha256 check against the manifest (the planted file alone),
and ``weights_only`` loading (the planted file with its hash rewritten into the manifest too, as
an attacker who can write the whole run folder would)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2iops import storage
from t2iops.cli import main
from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.encode import encode_dataset
from t2iops.errors import T2IError
from t2iops.presets import preset_config, preset_path
from t2iops.train import train
from t2iops.train.distributed import shutdown

pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(model, *extra):
    return [f"model.base_model={model}", "data.synth.count=12", "data.val_fraction=0.0", "data.test_fraction=0.0",
            "encode.resolution=64", "encode.shard_size=8", "encode.batch_size=8", "train.batch_size=2",
            "train.num_workers=0", "train.max_steps=1", "train.checkpoint_every=1", "train.log_every=1",
            "train.timestep_sampling=cubic", *extra]  # over the toy preset


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_sdxl_path):
    root = tmp_path_factory.mktemp("pickle")
    cfg = preset_config("toy", overrides(tiny_sdxl_path))
    synthesize(str(root / "data"), cfg)
    validate(str(root / "data"), str(root / "validated"), cfg)
    encode_dataset(str(root / "data"), str(root / "validated"), str(root / "cache"), cfg)
    return root / "cache"


class _Payload:
    """Pickles as ``eval(code)``: write the marker, then load and return the original state."""

    def __init__(self, marker: Path, original: Path):
        self.code = (f"(__import__('pathlib').Path({str(marker)!r}).write_text('code ran'), "
                     f"__import__('torch').load({str(original)!r}, weights_only=False))[1]")

    def __reduce__(self):
        return eval, (self.code,)


def plant(checkpoint: Path, rel: str, marker: Path, keep: Path, rehash: bool = False) -> None:
    """Replace ``checkpoint/rel`` by a marker pickle; with ``rehash`` also record its sha256 in the
    manifest."""
    target = checkpoint / rel
    original = keep / rel.replace("/", "__")
    if target.suffix == ".pt":
        shutil.copy(target, original)
    else:  # a JSON or safetensors file: the payload returns a stand-in; the hash check comes first
        torch.save({"stand-in": torch.zeros(1)}, original)
    torch.save(_Payload(marker, original), target)
    if rehash:
        manifest = json.loads((checkpoint / storage.MANIFEST).read_text())
        manifest["files"][rel] = {"bytes": target.stat().st_size, "sha256": storage.sha256_file(target)}
        (checkpoint / storage.MANIFEST).write_text(json.dumps(manifest))


def read_files(checkpoint: Path, ranks: int, zero: bool) -> list[str]:
    """The files a resume reads on this path."""
    files = ["state/trainer.json"] + [f"state/rng/rank-{r:05d}.safetensors" for r in range(ranks)]
    if zero:
        ds = sorted(p.relative_to(checkpoint).as_posix() for p in (checkpoint / "state/deepspeed/state").glob("*.pt"))
        assert "state/deepspeed/state/mp_rank_00_model_states.pt" in ds
        assert len([f for f in ds if f.endswith("optim_states.pt")]) == ranks
        return files + ds
    return files + ["state/adapter.safetensors", "state/optimizer.pt"]


def resume(cache, out, model, *extra, capsys):
    """Resume ``out`` for one more step; returns (exit code, error message). The plain path goes
    through the CLI. DeepSpeed keeps its process groups in globals, so the ZeRO paths call the
    same ``train`` in this process on the one process group it set up, mapping errors to exit
    codes as the CLI does."""
    extra = overrides(model, "train.max_steps=2", *extra)
    if not any("zero_stage" in o for o in extra):
        args = ["train", "--cache", str(cache), "--out", str(out), "--resume", "latest",
                "--params", str(preset_path("toy"))]
        for o in extra:
            args += ["-S", o]
        rc = main(args)
        return rc, capsys.readouterr().err
    try:
        train(str(cache), str(out), preset_config("toy", extra), resume="latest")
    except T2IError as exc:
        return exc.exit_code, str(exc)
    return 0, ""


def _fresh_copy(run: Path, tmp: Path, name: str) -> tuple[Path, Path]:
    copy = tmp / name
    shutil.copytree(run, copy)
    return copy, copy / "checkpoints" / "step-000001"


@pytest.mark.parametrize("path_args", [
    pytest.param((), id="torch-adamw"),
    pytest.param(("train.zero_stage=1",), id="zero1", marks=pytest.mark.slow),
    pytest.param(("train.zero_stage=2",), id="zero2", marks=pytest.mark.slow)])
def test_a_planted_pickle_is_refused_on_one_process(request, tmp_path, cache, tiny_sdxl_path, capsys, monkeypatch,
                                                    path_args):
    if path_args:
        pytest.importorskip("deepspeed")
        for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(k, raising=False)  # train() sets them for its one-process group
        request.addfinalizer(shutdown)
    run = tmp_path / "run"
    train(str(cache), str(run), preset_config("toy", overrides(tiny_sdxl_path, *path_args)))
    files = read_files(run / "checkpoints" / "step-000001", ranks=1, zero=bool(path_args))
    keep = tmp_path / "originals"
    keep.mkdir()
    marker = tmp_path / "marker"

    # Guard 1: the sha256 recorded at save time. Each file, alone.
    for i, rel in enumerate(files):
        out, checkpoint = _fresh_copy(run, tmp_path, f"hash-{i}")
        plant(checkpoint, rel, marker, keep)
        rc, err = resume(cache, out, tiny_sdxl_path, *path_args, capsys=capsys)
        assert rc == 1, err
        assert rel in err and "sha256" in err and "manifest recorded" in err, err
        assert not marker.exists(), f"code planted in {rel} ran"

    # Guard 2: weights_only loading, for each pickle the loaders open (manifest rewritten to match).
    for i, rel in enumerate(f for f in files if f.endswith(".pt")):
        out, checkpoint = _fresh_copy(run, tmp_path, f"rehashed-{i}")
        plant(checkpoint, rel, marker, keep, rehash=True)
        rc, err = resume(cache, out, tiny_sdxl_path, *path_args, capsys=capsys)
        assert rc == 1, err
        assert Path(rel).name in err and "holds more than tensor data" in err, err
        assert not marker.exists(), f"code planted in {rel} ran"

    # The untouched checkpoint still resumes.
    rc, err = resume(cache, run, tiny_sdxl_path, *path_args, capsys=capsys)
    assert rc == 0, err


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cache, out, model, resume=None, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "t2iops.cli", "train", "--cache", str(cache), "--out", str(out), "--params", str(preset_path("toy"))]
    cmd += ["--resume", resume] if resume else []
    for o in overrides(model, "train.zero_stage=2", "train.batch_size=4", *extra):
        cmd += ["-S", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_planted_pickle_is_refused_by_zero2_on_two_ranks(tmp_path, cache, tiny_sdxl_path):
    """Every file both ranks read planted at once (each rank verifies the whole checkpoint, and
    DeepSpeed reads every rank's optimizer partition): refused by hash, then, with the manifest
    rewritten, by weights_only."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    made = _torchrun(cache, run, tiny_sdxl_path)
    assert made.returncode == 0, made.stderr[-3000:]
    files = read_files(run / "checkpoints" / "step-000001", ranks=2, zero=True)
    keep = tmp_path / "originals"
    keep.mkdir()
    marker = tmp_path / "marker"
    for rehash in (False, True):
        out, checkpoint = _fresh_copy(run, tmp_path, f"planted-{rehash}")
        planted = [f for f in files if f.endswith(".pt")] if rehash else files
        for rel in planted:
            plant(checkpoint, rel, marker, keep, rehash=rehash)
        proc = _torchrun(cache, out, tiny_sdxl_path, "latest", "train.max_steps=2")
        assert proc.returncode != 0
        expected = "holds more than tensor data" if rehash else "manifest recorded"
        assert expected in proc.stderr and any(Path(f).name in proc.stderr for f in planted), proc.stderr[-3000:]
        assert not marker.exists()
