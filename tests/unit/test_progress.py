"""The progress helper: plain log lines when stderr is not a terminal (every N steps, at least
once per interval, a last line at the end), a tqdm bar on a real pseudo-terminal."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from t2iops.progress import LogProgress, progress


class Clock:
    """A clock the test advances by hand, so the time rule is checked without sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def lines(caplog):
    caplog.set_level(logging.INFO, logger="t2iops.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "t2iops.progress"]


def test_not_a_terminal_gives_log_lines_every_n_steps_and_at_the_end(lines):
    bar = progress(range(10), desc="encode latents", unit="batch", every=4, stream=io.StringIO(), min_gap_s=0)
    assert isinstance(bar, LogProgress)
    assert list(bar) == list(range(10))
    got = lines()
    assert [line.split(",")[0] for line in got] == [
        "encode latents: 4/10 batch (40%)", "encode latents: 8/10 batch (80%)", "encode latents: 10/10 batch (100%)"]
    assert "elapsed" in got[-1] and "eta" not in got[-1] and "eta" in got[0]


def test_default_every_is_five_percent(lines):
    list(progress(range(200), desc="x", stream=io.StringIO(), min_gap_s=0))
    assert len(lines()) == 20 and lines()[0].startswith("x: 10/200 it (5%)")


def test_a_loop_over_in_a_moment_logs_its_last_line_only(lines):
    """Step lines come at most one per min_gap_s: 20 rows validated in a millisecond give one line,
    not twenty; a slow loop still gets its line per 5 %."""
    list(progress(range(20), desc="validate", unit="row", stream=io.StringIO()))
    assert [line.split(",")[0] for line in lines()] == ["validate: 20/20 row (100%)"]
    clock = Clock()
    bar = LogProgress(total=40, desc="slow", unit="row", clock=clock)
    for _ in range(40):
        clock.now += 1.5  # a line per 2 rows would be 3 s apart: every one is logged
        bar.update(1)
    bar.close()
    assert len([line for line in lines() if line.startswith("slow:")]) == 20


def test_at_least_one_line_per_interval_between_steps(lines):
    clock = Clock()
    bar = LogProgress(total=1000, desc="train", unit="step", every=500, interval_s=60, clock=clock)
    bar.update(1)
    clock.now += 59
    bar.update(1)
    assert lines() == []
    clock.now += 2  # 61 s since the start: a line even though no multiple of 500 was reached
    bar.set_postfix({"loss": "0.1234", "lr": "1.00e-04"})
    bar.update(1)
    (line,) = lines()
    assert line.startswith("train: 3/1000 step (0%), ") and "elapsed 1m01s" in line
    assert line.endswith("loss=0.1234 lr=1.00e-04")
    clock.now += 30
    bar.update(1)
    assert len(lines()) == 1  # 30 s after the last line
    bar.close()
    bar.close()
    assert len(lines()) == 2 and lines()[1].startswith("train: 4/1000 step")


def test_resumed_loop_counts_from_its_start_and_rate_uses_new_steps_only(lines):
    clock = Clock()
    bar = LogProgress(total=100, initial=50, desc="train", unit="step", every=10, clock=clock)
    clock.now += 10
    bar.update(10)
    assert lines()[0].startswith("train: 60/100 step (60%), 1 step/s, elapsed 10s, eta 40s")


def test_unknown_total_and_disable(lines):
    list(progress(iter(range(250)), desc="hash rows", unit="row", stream=io.StringIO(), min_gap_s=0))
    assert [line.split(",")[0] for line in lines()] == ["hash rows: 100 row", "hash rows: 200 row", "hash rows: 250 row"]
    list(progress(range(500), desc="quiet", disable=True, stream=io.StringIO()))
    assert not any(line.startswith("quiet") for line in lines())


TERMINAL_CHILD = """
import os, select
from tqdm import tqdm
from t2iops.progress import progress
master, replica = os.openpty()
with os.fdopen(replica, "w") as terminal:
    bar = progress(range(3), desc="sampling", unit="batch", stream=terminal)
    assert isinstance(bar, tqdm), type(bar)
    assert list(bar) == [0, 1, 2]
    terminal.flush()
    # Read before the replica closes (Linux drops unread output then); never block. A pty hands
    # over what was written in pieces, so read until the final state has arrived (or 10 s pass).
    seen = b""
    while b"3/3" not in seen:
        ready, _, _ = select.select([master], [], [], 10)
        if not ready:
            break
        seen += os.read(master, 65536)
    print(seen.decode())
"""


def test_a_terminal_gets_a_tqdm_bar():
    """In a child without tests/conftest.py's TQDM_DISABLE (tqdm reads it at import)."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    child = subprocess.run([sys.executable, "-c", TERMINAL_CHILD], env=env, capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == 0, child.stderr
    assert "sampling" in child.stdout and "3/3" in child.stdout and "batch/s" in child.stdout
