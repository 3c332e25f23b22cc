"""One writer per run folder: a second trainer refuses (exit 2, naming the holder); a lock left
by a dead holder is taken over with a warning; a ``latest`` that is empty or points nowhere falls
back to the newest complete checkpoint."""
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from t2iops.cli import main
from t2iops.train.checkpoint import Checkpointer
from t2iops.train.distributed import DistInfo
from t2iops.train.run_lock import LOCK_NAME, RunLock

SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_a_second_writer_refuses_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    # A real second process holds the lock, as a running trainer's rank 0 does.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from t2iops.train.run_lock import RunLock
        RunLock.acquire(Path({str(out)!r}))
        print("held", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["train", "--cache", str(tmp_path / "cache"), "--out", str(out), "--resume", "latest"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"pid {holder.pid}" in err and "another training run" in err and LOCK_NAME in err, err
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning_and_removed_on_release(tmp_path, caplog):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from pathlib import Path
        from t2iops.train.run_lock import RunLock
        RunLock.acquire(Path({str(out)!r}))
        print(os.getpid())
        os._exit(0)  # dies holding it: the file stays, the kernel drops the flock
        """)], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == dead_pid
    with caplog.at_level(logging.WARNING, logger="t2iops.train"):
        lock = RunLock.acquire(out)
    assert f"pid {dead_pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((out / LOCK_NAME).read_text())["pid"] != dead_pid
    lock.release()
    assert not (out / LOCK_NAME).exists()
    RunLock.acquire(out).release()  # free again


def _write(step):
    def write(folder):
        (folder / "state").mkdir(parents=True, exist_ok=True)
        (folder / "state" / "trainer.json").write_text(json.dumps({"step": step}))
    return write


@pytest.mark.parametrize("latest", ["", "step-000099", "../../elsewhere", None])
def test_a_latest_that_is_empty_or_points_nowhere_falls_back_to_the_newest_complete(tmp_path, caplog, latest):
    ck = Checkpointer(str(tmp_path / "run"), SOLO, keep_last=5)
    for step in (2, 4, 10):
        ck.save(step, _write(step))
    (tmp_path / "run/checkpoints/.step-000012.tmp-1234").mkdir()  # a save killed midway
    pointer = tmp_path / "run/checkpoints/latest"
    if latest is None:
        pointer.unlink()
    else:
        pointer.write_text(latest)
    with caplog.at_level(logging.WARNING, logger="t2iops.train"):
        assert ck.resolve("latest").endswith("step-000010")
    assert "newest complete checkpoint, step-000010" in caplog.text


def test_latest_with_no_complete_checkpoint_starts_a_new_run(tmp_path):
    ck = Checkpointer(str(tmp_path / "run"), SOLO)
    (tmp_path / "run/checkpoints/step-000002").mkdir(parents=True)  # no manifest: incomplete
    (tmp_path / "run/checkpoints/latest").write_text("step-000002")
    assert ck.resolve("latest") is None
