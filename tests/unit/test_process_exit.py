"""The exit-time collect-then-freeze (t2iops.process): garbage that exists at exit is still
finalized, the rest is frozen before the interpreter's shutdown collections, other exit handlers
still run, and the exit status is kept."""
import json
import subprocess
import sys

SCRIPT = r"""
import atexit, gc, json, sys
out = sys.argv[1]

def report():  # registered before the hook, so it runs after it
    with open(out + ".after", "w") as fh:
        json.dump({"frozen": gc.get_freeze_count()}, fh)

atexit.register(report)
from t2iops.process import collect_once_at_exit
collect_once_at_exit()
collect_once_at_exit()  # once per process, however often it is asked

class Node:  # a reference cycle with a finalizer: only a collection frees it
    def __del__(self):
        with open(out + ".finalized", "w") as fh:
            fh.write("yes")

a, b = Node(), Node()
a.other, b.other = b, a
del a, b
gc.disable()  # nothing collects it before exit
sys.exit(int(sys.argv[2]))
"""


def run(tmp_path, status: int):
    out = tmp_path / f"probe{status}"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(status)], capture_output=True, text=True,
                          timeout=120)
    return proc, out


def test_exit_collects_once_then_freezes_and_keeps_the_status(tmp_path):
    proc, out = run(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "probe0.finalized").read_text() == "yes"  # the cycle's finalizer ran
    assert json.loads((tmp_path / "probe0.after").read_text())["frozen"] > 1000  # the rest was frozen
    assert proc.stderr == ""  # registered once: no second collect, no error at exit

    proc, out = run(tmp_path, 3)
    assert proc.returncode == 3
    assert (tmp_path / "probe3.finalized").exists()


def test_the_cli_and_every_step_install_it():
    code = ("import atexit, t2iops.process as p; from t2iops.cli import main; "
            "rc = main(['config', 'show', '--params', 'params.yaml']); print(p._registered)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"
    code = ("import t2iops.process as p; from t2iops.pipelines.runtime import stage_config; "
            "stage_config('{}', 'train'); print(p._registered)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"
