"""kfp.local swaps ``builtins.print`` (task output indentation) and the root logger's handlers
per task and puts back what it found; overlapping tasks (its DAG orchestrator runs parallel ones
in threads) can leave a task's state behind for the rest of the process. run_local keeps the
process's print and root logger whatever happened inside."""
from __future__ import annotations

import builtins
import contextlib
import io
import logging
import sys
import threading

from kfp.local import logging_utils

from t2iops.pipelines.kfp_workarounds import process_state_kept


def _overlapping_tasks() -> None:
    """Two tasks' contexts, the second entered while the first is open and left last, in two
    threads, as kfp.local's parallel tasks interleave; each task's stdout is its own stream."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def task(enter_after, entered, leave_after, left):
        if enter_after:
            enter_after.wait(5)
        mine = sys.stdout = io.StringIO()  # what a capturing caller (a test, a notebook cell) swaps in
        with logging_utils.local_logger_context(), logging_utils.indented_print():
            entered.set()
            leave_after.wait(5)
        mine.close()
        if left:
            left.set()

    threads = [threading.Thread(target=task, args=(None, first_in, second_in, first_out)),
               threading.Thread(target=task, args=(first_in, second_in, first_out, None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


@contextlib.contextmanager
def _saved():
    stdout, printer, root = sys.stdout, builtins.print, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        sys.stdout, builtins.print = stdout, printer
        root.handlers[:] = handlers
        root.setLevel(level)


def test_overlapping_kfp_tasks_leave_their_state_behind_and_run_local_keeps_the_process_own():
    root = logging.getLogger()
    with _saved():
        printer, handlers = builtins.print, root.handlers[:]
        _overlapping_tasks()
        # kfp's behaviour, the reason for the guard: an indenting print and a handler on a closed stream
        assert builtins.print is not printer
        assert root.handlers != handlers and any(getattr(h, "stream", None) is not None and h.stream.closed
                                                 for h in root.handlers)

    with _saved():
        printer, handlers, level = builtins.print, root.handlers[:], root.level
        with process_state_kept():
            _overlapping_tasks()
        assert builtins.print is printer and root.handlers == handlers and root.level == level
