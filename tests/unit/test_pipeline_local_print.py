"""kfp.local's task output indentation replaces ``builtins.print`` per task; overlapping tasks
(its DAG orchestrator runs parallel ones in threads) can leave an indenting print behind for the
rest of the process. run_local puts the process's print back whatever happened inside."""
from __future__ import annotations

import builtins
import threading

from kfp.local import logging_utils

from t2iops.pipelines.local import _print_restored


def _overlapping_tasks() -> None:
    """Two tasks' indentation contexts, the second entered while the first is open and left last,
    in two threads, as parallel tasks interleave."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with logging_utils.indented_print():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with logging_utils.indented_print():
            second_in.set()
            first_out.wait(5)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_overlapping_kfp_tasks_leave_an_indenting_print_and_run_local_puts_it_back(capsys):
    original = builtins.print
    try:
        _overlapping_tasks()
        leaked = builtins.print is not original
        print("x")
        assert leaked and capsys.readouterr().out == "    x\n"  # kfp's behaviour, the reason for the guard
    finally:
        builtins.print = original

    with _print_restored():
        _overlapping_tasks()
    assert builtins.print is original
    print("x")
    assert capsys.readouterr().out == "x\n"
